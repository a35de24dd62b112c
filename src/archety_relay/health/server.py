"""The only user of prometheus_client: `/metrics` and `/healthz` on 127.0.0.1.

Every scrape asks `snapshot()` for the relay's state as values and turns it into metric families
(a custom collector, so nothing is kept twice); `/healthz` answers from the same snapshot through
`checks.healthz`. The handlers only read. The server binds to the loopback address and nothing
else: the numbers say how busy the persona is, which is nobody else's business, and an agent on
the same Mac (Grafana Alloy, node_exporter's textfile, a Prometheus) is what scrapes it.

Labels are fixed words only (an outcome, an alert kind, the version, the agent id): never a
chat, handle, name, text or secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .checks import (
    FAILING_ALERTS,
    INBOUND_SILENCE,
    MESSAGES_UNRESPONSIVE,
    Snapshot,
    backend_down_for,
    healthz,
)
from .tally import DELIVERY_BUCKETS, DETECTION_BUCKETS, Histogram, TallyView

log = structlog.get_logger("archety_relay.health")

HOST = "127.0.0.1"
ATTEMPT_OUTCOMES = ("delivered", "retry", "auth_paused", "dead_lettered")
SEND_OUTCOMES = ("ok", "timeout", "refused", "error")
RECEIPT_OUTCOMES = ("delivered", "not_delivered")
ALERT_KINDS = (INBOUND_SILENCE, *FAILING_ALERTS, MESSAGES_UNRESPONSIVE)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _empty_tally() -> TallyView:
    none = Histogram(DELIVERY_BUCKETS).cumulative(), 0.0
    return TallyView(
        0, 0, {}, {}, {}, none, (Histogram(DETECTION_BUCKETS).cumulative(), 0.0), None, None
    )


class RelayCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        t = s.tally or _empty_tally()
        p = "archety_relay_"
        yield CounterMetricFamily(
            p + "messages_captured_total",
            "Messages moved from chat.db into the outbox.",
            t.captured,
        )
        yield CounterMetricFamily(
            p + "messages_delivered_total", "Messages the backend accepted (2xx).", t.delivered
        )
        yield _by_outcome(
            p + "delivery_attempts_total",
            "Answers from the backend to one message, by what they meant.",
            ATTEMPT_OUTCOMES,
            t.attempts,
        )
        yield _by_outcome(
            p + "sends_total",
            "Sends through Messages.app (osascript), by result.",
            SEND_OUTCOMES,
            t.sends,
        )
        yield _by_outcome(
            p + "outcomes_total",
            "The persona's sent messages Messages marked delivered, or failed after sending.",
            RECEIPT_OUTCOMES,
            t.outcomes,
        )
        for name, doc, (buckets, total) in (
            (
                "delivery_latency_seconds",
                "From a message's date in chat.db to the backend's 2xx.",
                t.delivery_latency,
            ),
            (
                "detection_latency_seconds",
                "From a message's date in chat.db to the relay storing it in its outbox.",
                t.detection_latency,
            ),
        ):
            yield HistogramMetricFamily(p + name, doc, buckets=buckets, sum_value=total)
        oldest = max(0.0, s.now - s.oldest_enqueued_at) if s.oldest_enqueued_at else 0.0
        for name, doc, value in (
            ("queue_depth", "Messages waiting for the backend.", s.queue_depth),
            ("oldest_undelivered_seconds", "Age of the oldest queued message.", oldest),
            ("dead_letters", "Messages given up on (see `status`).", s.dead_letters),
            ("events_pending", "Events not yet acknowledged by the backend.", s.events_pending),
            (
                "backend_up",
                "1 while the backend answers (any status below 500).",
                1 if t.backend_ok_at is not None and backend_down_for(s) == 0 else 0,
            ),
            (
                "auth_ok",
                "0 while the backend rejects the webhook secret.",
                0 if (s.pause_reason or "").startswith("auth_") else 1,
            ),
            ("chatdb_readable", "0 while chat.db cannot be read.", int(s.chatdb_ok)),
            (
                "last_inbound_timestamp_seconds",
                "Unix time of the newest incoming message in chat.db (0: none).",
                s.last_inbound_at or 0,
            ),
        ):
            yield GaugeMetricFamily(p + name, doc, value=value)
        alerts = GaugeMetricFamily(
            p + "alerts", "1 while an alert of this kind is raised.", labels=["kind"]
        )
        for kind in sorted({*ALERT_KINDS, *s.alerts}):
            alerts.add_metric([kind], 1 if kind in s.alerts else 0)
        yield alerts
        yield InfoMetricFamily(
            "archety_relay",
            "The relay's version and edge agent id.",
            value={"version": s.version, "edge_agent_id": s.agent_id},
        )


def _by_outcome(
    name: str, doc: str, known: tuple[str, ...], counts: dict[str, int]
) -> CounterMetricFamily:
    """A counter per outcome; the known ones at 0 from the start, so a rate() has a series."""
    family = CounterMetricFamily(name, doc, labels=["outcome"])
    for outcome in sorted({*known, *counts}):
        family.add_metric([outcome], counts.get(outcome, 0))
    return family


def make_app(snapshot: Callable[[], Snapshot]) -> WsgiApp:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(snapshot))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, 405, {"error": "method not allowed"})
        try:
            if path == "/metrics":
                return metrics(environ, start_response)
            if path == "/healthz":
                code, body = healthz(snapshot())
                return _reply(start_response, code, body)
        except Exception as exc:  # the state database closed under us at shutdown, say
            log.warning("metrics_request_failed", path=path, error_type=type(exc).__name__)
            return _reply(start_response, 503, {"status": "failing", "error": type(exc).__name__})
        return _reply(
            start_response, 404, {"error": "not found", "paths": ["/metrics", "/healthz"]}
        )

    return app


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _reply(start_response: Callable[..., Any], code: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    start_response(
        f"{code} {_REASONS[code]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the relay's shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Every scrape would be a line on stderr (launchd.err.log); the scraper logs them."""


class MetricsServer:
    def __init__(self, httpd: _Server) -> None:
        self.httpd = httpd
        self.port = int(httpd.server_address[1])
        self.url = f"http://{HOST}:{self.port}"
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        """Answer requests until `stop`; the daemon runs this on its own thread."""
        self.httpd.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bind(port: int, snapshot: Callable[[], Snapshot]) -> MetricsServer | None:
    """Listen on 127.0.0.1:`port` (0 is not accepted here: the caller turns that into "off").
    A port in use (another relay, another exporter) is one warning and no server: the relay
    itself goes on."""
    try:
        httpd = make_server(
            HOST, port, make_app(snapshot), server_class=_Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        log.warning(
            "metrics_port_unavailable",
            port=port,
            error=f"{type(exc).__name__}: {exc.strerror or exc}",
            hint="set ARCHETY_METRICS_PORT to a free port, or 0 to turn /metrics off",
        )
        return None
    server = MetricsServer(httpd)
    log.info("metrics_listening", url=server.url, paths=["/metrics", "/healthz"])
    return server
