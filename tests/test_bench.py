"""The benchmark runs: ``python -m bench --scenario latency`` on tiny sizes.

Only the shape of its result and the absence of lost or misrouted replies are checked;
timings are the benchmark's to report, never a test's to assert.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.system


def test_latency_scenario_writes_its_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--scenario", "latency", "--sessions", "3", "--messages", "2", "--tokens", "4"]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    (path,) = tmp_path.glob("*-latency.json")
    result = json.loads(path.read_text())
    assert result["scenario"] == "latency"
    assert result["options"]["sessions"] == 3
    assert result["options"]["messages"] == 2
    assert (result["sent"], result["replies"]) == (6, 6)
    assert (result["lost"], result["misrouted"], result["errors"]) == (0, 0, 0)
    for name in ("first_token_ms", "done_ms"):
        assert result[name]["n"] == 6
        assert {"median", "p95", "p99"} <= result[name].keys()
    assert result["replies_per_s"] > 0
    assert {"wall_s", "started_at", "machine", "elapsed_s"} <= result.keys()
    assert capsys.readouterr().out.startswith("latency: 3 sessions x 2 messages")
