"""The benchmark's machinery, on tiny sizes: ``python -m bench`` runs and reports.

Only the shape of its results and the absence of lost or misrouted replies are checked;
timings are the benchmark's to report, never a test's to assert.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import floor, report
from bench.analysis import _delta_delays
from bench.cli import main
from bench.figures import _where_baseline_keeps_up, falls_behind
from bench.scenarios import SCENARIOS, Options
from bench.settings import load_overrides
from bench.stacks import CANDIDATES
from testkit.standin import reply_tokens

pytestmark = pytest.mark.system

TINY = ["--sessions", "3", "--messages", "2", "--tokens", "6", "--rounds", "1"]
TINY += ["--think-ms", "0", "--stagger-ms", "0", "--sockets", "20"]


def options_of(result: dict[str, Any]) -> Options:
    """The options a scenario ran with, from its result."""
    given = result["options"]
    return Options(**{**given, "sweep": tuple(given["sweep"])})


@pytest.mark.timeout(180)
def test_scenarios_run_against_parley_and_the_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--scenario", "latency,connections", *TINY, "--delay-ms", "1", "--sweep", "0.34"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0

    (path,) = tmp_path.glob("*.json")
    assert path.with_suffix(".png").stat().st_size > 0
    assert "| `latency` |" in path.with_suffix(".md").read_text()
    record = json.loads(path.read_text())
    latency, connections = record["scenarios"]
    assert (latency["scenario"], connections["scenario"]) == ("latency", "connections")
    for result in (latency, connections):
        for target in ("parley", "baseline"):
            r = result[target]
            assert (r["lost"], r["misrouted"], r["duplicated"], r["errors"]) == (0, 0, 0, 0)
            assert (r["out_of_order"], r["garbled"]) == (0, 0)
            assert r["replies"] == r["sent"] > 0
            for name in ("added_ttft_ms", "added_done_ms", "event_delay_ms", "model_ttft_ms"):
                assert r[name]["n"] > 0
                assert {"median", "p95", "p99", "max"} <= r[name].keys()
            assert r["replies_per_s"] > 0 and r["token_events_per_s"] > 0
            assert r["cpu_s"].keys() >= {"model", "load"}
            assert r["timeline"]["replies_per_s"]
        assert result["parley"]["cpu_s"].keys() >= {"server-1", "worker-1", "redis"}
        assert result["baseline"]["cpu_s"].keys() >= {"baseline"}
        assert result["parley"]["redis"]["commands_per_reply"] > 0
        # A ratio is None where its baseline figure is 0 (a few replies may take less
        # CPU than the clock's resolution), so only their presence is checked.
        assert result["ratio"].keys() >= {
            "added_ttft_ms",
            "added_ttft_ms_p99",
            "replies_per_s",
            "token_events_per_s",
            "cpu_ms_per_reply",
            "kb_per_socket",
        }
        assert result["ratio"]["added_ttft_ms"] > 0 and result["ratio"]["token_events_per_s"] > 0
        # Six replies may take less CPU than a process clock tick (10 ms): 0 is possible.
        assert result["parley"]["own_cpu_ms_per_reply"] >= 0
    assert latency["parley"]["redis"]["connections"]["server-1"] >= 1
    # The sweep ran the load again with 1 session of 3: both loads are its points.
    for target in ("parley", "baseline"):
        points = latency[target]["sweep"]
        assert [p["sessions"] for p in points] == [1, 3]
        assert [p["offered_tokens_per_s"] for p in points] == [1000.0, 3000.0]
        assert all(p["failures"] == 0 and p["tokens_per_s"] > 0 for p in points)
        assert "falls_behind_tokens_per_s" in latency[target]
        assert [p["replies"] for p in points] == [1 * 2, 3 * 2]
    assert latency["parley"]["sent"] == 3 * 2
    sockets = connections["parley"]["sockets"]
    assert sockets["open"] == 20
    assert sockets["redis_connections_at_10"] >= 1 and sockets["peak_rss_mb"] > 0

    out = capsys.readouterr().out
    assert "latency     " in out and "connections " in out
    assert "added TTFT" in out
    assert "tokens/s offered" in out
    # What Parley ran with, besides its defaults, is said with the figures, and why.
    assert "Parley's settings changed from its defaults:" in out
    assert "CONVERSATION_TITLES=false (the baseline asks for no titles" in out
    assert "MAX_SOCKETS_PER_CLIENT=42 (the run holds 42 sockets at once, two phases" in out
    assert latency["overrides"] == load_overrides(options_of(latency)).described()
    assert "CONVERSATION_TITLES=false" in path.with_suffix(".md").read_text()


@pytest.mark.timeout(180)
def test_stacks_measures_every_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--scenario", "stacks", "--sockets", "30", "--messages", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("*.json")
    (result,) = json.loads(path.read_text())["scenarios"]
    assert result["failures"] == 0
    assert set(result["stacks"]) == set(CANDIDATES)
    for figures in result["stacks"].values():
        assert figures["echoed"] == figures["sent"] == 10 * 5
        assert figures["rss_mb"] > 0 and figures["opened_per_s"] > 0
    assert "granian" in capsys.readouterr().out


def test_where_each_falls_behind_and_where_the_baseline_keeps_up() -> None:
    def point(sessions: int, p99: float | None) -> dict[str, Any]:
        return {
            "sessions": sessions,
            "offered_tokens_per_s": sessions * 50.0,
            "event_delay_ms_p99": p99,
        }

    parley: dict[str, Any] = {
        "event_delay_ms": {"p99": 900.0},
        "sweep": [point(10, 30.0), point(20, 150.0), point(40, 900.0)],
    }
    baseline: dict[str, Any] = {
        "event_delay_ms": {"p99": 400.0},
        "sweep": [point(10, 20.0), point(20, 60.0), point(40, 400.0)],
    }
    assert falls_behind(parley["sweep"]) == 1000.0
    assert falls_behind(baseline["sweep"]) == 2000.0
    assert falls_behind([point(10, 30.0)]) is None
    # The baseline keeps up at 10 and 20 sessions: Parley's worst p99 there.
    assert _where_baseline_keeps_up(parley, baseline) == 150.0
    assert (
        _where_baseline_keeps_up(
            {"event_delay_ms": {"p99": 5.0}}, {"event_delay_ms": {"p99": 500.0}}
        )
        is None
    )


def test_event_delays_follow_the_deltas_into_coalesced_events() -> None:
    deltas = reply_tokens("hi", 5)  # "Reply ", "to: ", "hi ", "lorem ", "ipsum"
    written = [0.0, 0.1, 0.2, 0.3, 0.4]
    # The worker strips the space after each event's last word and sends it with the next.
    events = [(0.05, "Reply"), (0.35, " to: hi lorem"), (0.5, " ipsum")]
    delays = _delta_delays(deltas, written, events)
    assert [at for at, _ in delays] == [0.05, 0.35, 0.35, 0.35, 0.5]
    assert [round(d) for _, d in delays] == [50, 250, 150, 50, 100]


@pytest.mark.parametrize(
    ("ratio", "failures", "verdict"), [(1.0, 0, "PASS"), (1.08, 0, "FAIL"), (1.0, 1, "FAIL")]
)
def test_the_real_model_line_passes_only_when_its_target_is_met_and_nothing_failed(
    ratio: float, failures: int, verdict: str
) -> None:
    side = {
        "first_token_ms": {"median": 200.0},
        "done_ms": {"median": 1400.0},
        "tokens_per_s": {"median": 26.0},
        "failures": 0,
    }
    result = {
        "direct": side,
        "parley": {**side, "failures": failures},
        "first_token_ratio": ratio,
        "done_ratio": 1.0,
    }
    assert report.line(SCENARIOS["real-model"], result).split()[:2] == ["real-model", verdict]


@pytest.mark.timeout(120)
def test_the_floor_measures_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.floor`` on a tiny size: each path answers every message (the
    Redis one would raise if its back process published nothing)."""
    measured = floor.measure(rounds=2, messages=5, gap_ms=1.0)
    assert sorted(measured.ms) == ["direct", "via Redis"]
    assert all(len(values) == 10 and min(values) > 0 for values in measured.ms.values())
    # The Redis path's CPU counts three processes, the direct one's one.
    assert measured.cpu_s["via Redis"] > 0 and measured.cpu_s["direct"] > 0
    floor.main(["--rounds", "1", "--messages", "3", "--gap-ms", "1"])
    out = capsys.readouterr().out
    assert "direct     median" in out and "(3 messages)" in out
    assert "via Redis minus direct, medians:" in out and "CPU a message" in out
