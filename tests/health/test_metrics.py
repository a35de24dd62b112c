"""/metrics and /healthz (issue #20): served by prometheus_client on 127.0.0.1, counting what the
relay did, never naming a person or a text, and answering 503 exactly when the relay cannot relay.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog.testing
from conftest import ALICE, wait_until
from prometheus_client.parser import text_string_to_metric_families

from archety_relay import config
from archety_relay.chatdb.reader import ChatDb
from archety_relay.daemon import Daemon
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import Behaviour, StubBackend
from archety_relay.errors import ChatDbUnavailable, ConfigError
from archety_relay.health import server as health_server
from archety_relay.health.checks import IMESSAGE_SIGNED_OUT, MESSAGES_NOT_RUNNING, healthz
from archety_relay.relay import Relay
from archety_relay.store import open_store

MSG = "/orchestrator/message"
TEXT = "meet me at the usual place"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def serve() -> Iterator[Callable[[Relay], str]]:
    """The metrics server over an in-process relay, as the daemon runs it; returns its URL."""
    servers: list[health_server.MetricsServer] = []

    def start(relay: Relay) -> str:
        server = health_server.bind(free_port(), lambda: relay.health_snapshot(time.time()))
        assert server is not None
        threading.Thread(target=server.serve, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def test_a_scrape_counts_a_relayed_message_and_names_nobody(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend, secret: str
) -> None:
    """A running daemon serves /metrics on 127.0.0.1 at the configured port: after one message
    the counters, the latency histogram and the info line say so, and nothing in the scrape is
    the sender's number, the text or the secret; /healthz says ok."""
    port = free_port()
    settings = config.load(environ={**env, "ARCHETY_METRICS_PORT": str(port)}, cwd=tmp_path)
    store = open_store(settings.state_dir)
    daemon = Daemon(settings, store)
    daemon.start()
    try:
        assert wait_until(lambda: daemon._ready)
        chat = writer.direct_chat(ALICE)
        writer.message(TEXT, sender=ALICE, chat=chat)
        assert backend.wait_for_messages(1)
        url = f"http://127.0.0.1:{port}"
        assert wait_until(
            lambda: (
                ("archety_relay_messages_delivered_total", ()) in samples(get(url + "/metrics")[1])
                and samples(get(url + "/metrics")[1])[
                    ("archety_relay_messages_delivered_total", ())
                ]
                == 1
            )
        )
        code, text = get(url + "/metrics")
        health_code, health = get(url + "/healthz")
    finally:
        daemon.shutdown()
        store.close()
    assert code == 200
    found = samples(text)
    assert found[("archety_relay_messages_captured_total", ())] == 1
    assert found[("archety_relay_delivery_attempts_total", (("outcome", "delivered"),))] == 1
    assert found[("archety_relay_delivery_latency_seconds_count", ())] == 1
    assert found[("archety_relay_detection_latency_seconds_count", ())] == 1
    assert found[("archety_relay_queue_depth", ())] == 0
    assert found[("archety_relay_auth_ok", ())] == 1
    assert found[("archety_relay_alerts", (("kind", "inbound_silence"),))] == 0
    info = [k for k in found if k[0] == "archety_relay_info"]
    assert info == [("archety_relay_info", (("edge_agent_id", "test-agent"), ("version", "0.1.0")))]
    for private in (ALICE, ALICE[1:], TEXT, secret, "iMessage;-;"):
        assert private not in text
    assert daemon.metrics is not None and daemon.metrics.httpd.server_address[0] == "127.0.0.1"
    assert health_code == 200 and json.loads(health)["status"] == "ok"


def test_healthz_503_when_the_backend_rejects_the_secret(
    relay: Relay, serve: Callable[[Relay], str], writer: MessagesWriter, backend: StubBackend
) -> None:
    """401 from the backend pauses sending: /healthz answers 503 naming the secret, and
    /metrics shows auth_ok 0."""
    backend.set_default(MSG, Behaviour(401))
    relay.capture_step(time.time())  # the first look places the cursor
    writer.message(TEXT, sender=ALICE, chat=writer.direct_chat(ALICE))
    relay.capture_step(time.time())
    assert relay.deliver_step(time.monotonic()).kind == "auth_paused"
    url = serve(relay)
    code, body = get(url + "/healthz")
    assert code == 503
    answer = json.loads(body)
    assert answer["status"] == "failing" and answer["checks"]["secret"]["ok"] is False
    assert samples(get(url + "/metrics")[1])[("archety_relay_auth_ok", ())] == 0


def test_healthz_503_when_chatdb_cannot_be_read(
    env: dict[str, str], tmp_path: Path, serve: Callable[[Relay], str]
) -> None:
    """chat.db missing (Full Disk Access revoked looks the same): 503, check chat_db false."""
    settings = config.load(
        environ={**env, "ARCHETY_CHAT_DB": str(tmp_path / "nowhere" / "chat.db")}, cwd=tmp_path
    )
    relay = Relay(settings, ChatDb(settings.chat_db), open_store(settings.state_dir))
    try:
        with pytest.raises(ChatDbUnavailable):
            relay.capture_step(time.time())
        code, body = get(serve(relay) + "/healthz")
    finally:
        relay.backend.close()
        relay.store.close()
    assert code == 503 and json.loads(body)["checks"]["chat_db"]["ok"] is False


def test_healthz_503_only_once_the_backend_has_been_unreachable_for_minutes(
    relay: Relay, backend: StubBackend
) -> None:
    """A heartbeat with no answer is a blip at first (200 degraded-free), and an outage five
    minutes later (503); an answer again clears it."""
    backend.stop()
    failed_at = time.time()
    relay.heartbeat_step()
    assert healthz(relay.health_snapshot(failed_at + 60))[0] == 200
    code, body = healthz(relay.health_snapshot(failed_at + 301))
    assert code == 503 and body["checks"]["backend"]["ok"] is False
    assert body["checks"]["backend"]["unreachable_for_s"] >= 300


@pytest.mark.parametrize("kind", [MESSAGES_NOT_RUNNING, IMESSAGE_SIGNED_OUT])
def test_healthz_503_while_messages_cannot_send(
    relay: Relay, serve: Callable[[Relay], str], kind: str
) -> None:
    """Messages.app not running or the iMessage account signed out: 503 until cleared, and the
    alert's gauge is 1 meanwhile."""
    now = time.time()
    relay.store.raise_alert(kind, now, now)
    url = serve(relay)
    code, body = get(url + "/healthz")
    assert code == 503 and kind in json.loads(body)["alerts"]
    assert samples(get(url + "/metrics")[1])[("archety_relay_alerts", (("kind", kind),))] == 1
    relay.store.clear_alert(kind, now + 1)
    assert get(url + "/healthz")[0] == 200


def test_healthz_degraded_but_200_with_dead_letters(
    relay: Relay, backend: StubBackend, writer: MessagesWriter
) -> None:
    """A message the backend refuses for good (422) is a dead letter: still 200, `degraded`."""
    backend.set_default(MSG, Behaviour(422))
    relay.capture_step(time.time())
    writer.message(TEXT, sender=ALICE, chat=writer.direct_chat(ALICE))
    relay.capture_step(time.time())
    assert relay.deliver_step(time.monotonic()).kind == "dead_lettered"
    code, body = healthz(relay.health_snapshot(time.time()))
    assert code == 200 and body["status"] == "degraded"
    assert body["checks"]["dead_letters"] == {"ok": False, "count": 1}


def test_a_port_in_use_is_one_warning_and_the_relay_goes_on(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Another program listens on ARCHETY_METRICS_PORT: one `metrics_port_unavailable` line,
    no server, and messages are relayed all the same."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = config.load(environ={**env, "ARCHETY_METRICS_PORT": str(port)}, cwd=tmp_path)
        store = open_store(settings.state_dir)
        daemon = Daemon(settings, store)
        with structlog.testing.capture_logs() as logged:
            daemon.start()
            try:
                # Written after the first capture placed the cursor: before it, the row would be
                # history the relay rightly never sends.
                assert wait_until(lambda: daemon._ready)
                writer.message(TEXT, sender=ALICE, chat=writer.direct_chat(ALICE))
                assert backend.wait_for_messages(1)
            finally:
                daemon.shutdown()
                store.close()
    warnings = [e for e in logged if e["event"] == "metrics_port_unavailable"]
    assert len(warnings) == 1 and warnings[0]["port"] == port
    assert daemon.metrics is None


def test_metrics_port_zero_is_off_and_durations_read_as_people_write_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    """ARCHETY_METRICS_PORT=0 turns the server off (the default is on, on a documented port);
    ARCHETY_SILENCE_ALERT takes seconds or 6h/30m/2d, 0 for off, and refuses nonsense by name."""
    assert config.load(environ={**env}, cwd=tmp_path).metrics_port == 0
    unset = {k: v for k, v in env.items() if k != "ARCHETY_METRICS_PORT"}
    assert config.load(environ=unset, cwd=tmp_path).metrics_port == config.DEFAULT_METRICS_PORT
    assert config.load(environ=unset, cwd=tmp_path).silence_alert == 6 * 3600
    for raw, seconds in (("6h", 21600), ("30m", 1800), ("2d", 172800), ("900", 900), ("0", 0)):
        loaded = config.load(environ={**env, "ARCHETY_SILENCE_ALERT": raw}, cwd=tmp_path)
        assert loaded.silence_alert == seconds
    for bad in ("soon", "5s", "-1h"):
        with pytest.raises(ConfigError, match="ARCHETY_SILENCE_ALERT"):
            config.load(environ={**env, "ARCHETY_SILENCE_ALERT": bad}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="ARCHETY_METRICS_PORT"):
        config.load(environ={**env, "ARCHETY_METRICS_PORT": "70000"}, cwd=tmp_path)
