"""The benchmark harness still runs end to end (small sizes). Figures are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_smoke_runs_to_completion(tmp_path: Path) -> None:
    """`bench/run.py --smoke` exits 0 and reports every figure for both relays."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "smoke.json").read_text())
    for section in ("latency", "burst", "idle"):
        assert set(figures[section]) == {"relay", "baseline"}
    assert figures["latency"]["relay"]["received"] == figures["sizes"]["messages"]
    assert figures["burst"]["relay"]["received"] == figures["sizes"]["burst"]
    assert figures["scale"]["relay"]["received"] == figures["sizes"]["messages"]
    assert figures["startup"]["median_s"] > 0 and figures["decode"]["median_per_s"] > 0
    for chats in figures["lanes"]["chats"]:
        for shape in ("side_by_side", "one_at_a_time"):
            assert chats[shape]["received"] == chats[shape]["chats"]
    drain = figures["lanes"]["drain"]
    assert drain["side_by_side"]["received"] == drain["messages"]
    assert drain["one_at_a_time"]["received"] == drain["messages"]
