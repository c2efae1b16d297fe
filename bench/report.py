"""Scenario results as text: one comparable line, a table, and a Markdown summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.scenarios import SCENARIOS, Check, Scenario
from bench.stats import ms

_INTEGRITY = ("lost", "misrouted", "duplicated", "out_of_order", "garbled", "errors")


def checks(scenario: Scenario) -> tuple[Check, ...]:
    """The scenario's targets, and for runs with the stand-in: no reply lost, misrouted,
    duplicated, out of order, garbled or failed."""
    if scenario.kind in ("real-model", "stacks"):
        return scenario.checks
    return (
        *scenario.checks,
        Check("replies lost, misrouted or failed", "parley.failures", "==", 0),
    )


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value == int(value) and not unit:
        return f"{value:.0f}"
    text = (
        f"{value:.0f}"
        if abs(value) >= 100
        else f"{value:.2f}"
        if abs(value) < 10
        else f"{value:.1f}"
    )
    return f"{text} {unit}".rstrip()


def verdicts(
    scenario: Scenario, result: dict[str, Any]
) -> list[tuple[Check, float | None, bool | None]]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    return [(c, c.value(result), c.verdict(result)) for c in checks(scenario)]


def passed(scenario: Scenario, result: dict[str, Any]) -> bool:
    """Whether every target of the scenario is met."""
    return all(ok for _, _, ok in verdicts(scenario, result))


def _check_text(check: Check, value: float | None, ok: bool | None) -> str:
    mark = "ok" if ok else "MISSED" if ok is not None else "n/a"
    return f"{check.label} {_fmt(value, check.unit)} ({check.op} {check.threshold:g} {mark})"


def _path(result: dict[str, Any], *parts: str) -> Any:
    node: Any = result
    for part in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def line(scenario: Scenario, result: dict[str, Any]) -> str:
    """One line to compare runs by: verdict, targets, the main figures, integrity."""
    if scenario.kind == "real-model":
        return _real_model_line(scenario, result)
    if scenario.kind == "stacks":
        return f"{scenario.name:<11} " + "; ".join(
            _stack_text(name, f) for name, f in result["stacks"].items()
        )
    checked = verdicts(scenario, result)
    verdict = "PASS" if all(ok for _, _, ok in checked) else "FAIL"
    parts = [f"{scenario.name:<11} {verdict}", "; ".join(_check_text(*c) for c in checked)]
    for target in ("parley", "baseline"):
        r = result.get(target)
        if r is None:
            continue
        text = (
            f"{target}: {r['replies_per_s']:.0f} replies/s, "
            f"{r['token_events_per_s']:.0f} token events/s, "
            f"added TTFT {ms(r['added_ttft_ms']['median'])}/{ms(r['added_ttft_ms']['p99'])} ms, "
            f"added done {ms(r['added_done_ms']['median'])}/{ms(r['added_done_ms']['p99'])} ms "
            "(median/p99)"
        )
        if r["event_delay_ms"]["n"] and result["options"]["delay_ms"]:
            text += (
                f", event delay {ms(r['event_delay_ms']['median'])}/"
                f"{ms(r['event_delay_ms']['p99'])} ms, "
                f"{_fmt(r['tokens_per_event'])} tokens/event"
            )
        sockets = r.get("sockets")
        if sockets:
            at_10 = sockets["added_ttft_ms_at_10"]["p99"]
            text += (
                f", {sockets['open']} sockets: peak RSS {_fmt(sockets['peak_rss_mb'], 'MB')}, "
                f"added TTFT p99 {ms(at_10)} ms with 10 sockets open"
            )
        if "sweep" in r:
            at = r["falls_behind_tokens_per_s"]
            text += ", falls behind at " + (
                f"{at:.0f} tokens/s offered" if at is not None else "no load of the sweep"
            )
        parts.append(text)
    o = result["options"]
    parts.append(f"flush {o['flush_ms']:g} ms")
    parts.append(", ".join(f"{k} {result['parley'][k]}" for k in _INTEGRITY))
    return " | ".join(parts)


def _stack_text(name: str, f: dict[str, Any]) -> str:
    if "error" in f:
        return f"{name} ERROR {f['error']}"
    kb, us = _fmt(f["kb_per_socket"], "KB"), _fmt(f["cpu_us_per_message"], "µs")
    return f"{name} {kb}/socket, {us}/echo"


def _real_model_line(scenario: Scenario, result: dict[str, Any]) -> str:
    """The real-model scenario's line: PASS only if its target is met and no reply failed."""
    d, p = result["direct"], result["parley"]
    ratio = result.get("first_token_ratio")
    done = result.get("done_ratio")
    met = all(ok for _, _, ok in verdicts(scenario, result))
    passed = met and not (d["failures"] or p["failures"])
    return (
        f"{'real-model':<11} {'PASS' if passed else 'FAIL'} | "
        f"first token direct {ms(d['first_token_ms']['median'])} ms, "
        f"Parley {ms(p['first_token_ms']['median'])} ms, ratio {_fmt(ratio)} | "
        f"done direct {ms(d['done_ms']['median'], 0)} ms, "
        f"Parley {ms(p['done_ms']['median'], 0)} ms, "
        f"ratio {_fmt(done)} | tokens/s a reply direct {ms(d['tokens_per_s']['median'])}, "
        f"Parley {ms(p['tokens_per_s']['median'])} | failures {d['failures']}/{p['failures']}"
    )


#: (label, figure) of the distributions in the table, each as median, p95, p99, max.
_DISTRIBUTIONS = (
    ("added TTFT", "added_ttft_ms"),
    ("added done", "added_done_ms"),
    ("  of TTFT: message to model", "to_model_ms"),
    ("  of TTFT: model to client", "from_model_ms"),
    ("client TTFT", "client_ttft_ms"),
    ("client done", "client_done_ms"),
    ("model's own TTFT", "model_ttft_ms"),
    ("model's own done", "model_done_ms"),
    ("event delay (per token)", "event_delay_ms"),
    ("event lag (per event)", "event_lag_ms"),
)


def overridden(result: dict[str, Any]) -> list[str]:
    """The rows that say which of Parley's settings the run changed from the product's
    defaults, and why (:mod:`bench.settings`); none for a run of no Parley."""
    changed = result.get("overrides")
    if changed is None:
        return []
    traced = result.get("tracing")
    tracing = (
        [f"  Tracing on: {traced['spans']} spans exported in {traced['exports']} requests"]
        if traced
        else []
    )
    return [
        *tracing,
        "  Parley's settings changed from its defaults:",
        *(f"    {line}" for line in changed or ["(none)"]),
    ]


def table(scenario: Scenario, result: dict[str, Any]) -> str:
    """The scenario's figures side by side: Parley, baseline, ratio; then costs; then
    the settings the run changed from Parley's defaults."""
    if scenario.kind == "real-model":
        return "\n".join([_real_model_table(result), *overridden(result)])
    if scenario.kind == "stacks":
        return _stacks_table(result)
    o = SCENARIOS[scenario.name].options.__class__(**result["options"])
    rows = [
        f"  {scenario.name}: {o.describe()}",
        f"  {'':<34}{'Parley':>12}{'baseline':>12}{'ratio':>8}",
        *_figure_rows(result),
        *_cost_rows(result["parley"], result.get("baseline")),
        *_redis_rows(result["parley"].get("redis")),
        *_sweep_rows(result),
    ]
    if result.get("log_errors"):
        rows.append(f"  ERRORS in the processes' logs: {len(result['log_errors'])}")
        rows += [f"    {line}" for line in result["log_errors"][:5]]
    rows += overridden(result)
    return "\n".join(rows)


def _row(
    result: dict[str, Any], label: str, *path: str, digits: int = 1, ratio_of: str | None = None
) -> str:
    """One figure of Parley and the baseline (at ``path``), and their ratio if named."""
    b = result.get("baseline")
    pv, bv = _path(result["parley"], *path), _path(b, *path) if b else None
    r = _path(result, "ratio", ratio_of) if ratio_of else None
    return (
        f"  {label:<34}{ms(pv, digits):>12}{ms(bv, digits):>12}"
        f"{(f'{r:.2f}' if r is not None else ''):>8}"
    )


def _figure_rows(result: dict[str, Any]) -> list[str]:
    """Rates, distributions, integrity counts, and the ``connections`` figures."""
    p = result["parley"]
    rows = [
        _row(result, "replies", "replies", digits=0),
        _row(result, "replies/s", "replies_per_s", ratio_of="replies_per_s"),
        _row(result, "token events/s", "token_events_per_s", ratio_of="token_events_per_s"),
        _row(result, "model tokens/s delivered", "tokens_per_s"),
        _row(result, "own CPU ms/reply", "own_cpu_ms_per_reply", digits=3,
             ratio_of="cpu_ms_per_reply"),
        _row(result, "own CPU us/model token", "own_cpu_us_per_token"),
    ]  # fmt: skip
    for label, name in _DISTRIBUTIONS:
        if p[name]["n"]:
            rows += [
                _row(result, f"{label} {stat} ms", name, stat, digits=2,
                     ratio_of=name if stat == "median" else None)
                for stat in ("median", "p95", "p99", "max")
            ]  # fmt: skip
    rows += [_row(result, k, k, digits=0) for k in _INTEGRITY]
    sockets = p.get("sockets")
    ratios = result.get("ratio", {})
    if sockets:
        n = sockets["open"]
        rows += [
            _row(result, label, "sockets", *key, ratio_of=key[0] if key[0] in ratios else None)
            for label, key in (
                ("sockets opened/s", ("opened_per_s",)),
                ("server RSS MB at 10 sockets", ("rss_mb_at_10",)),
                (f"server RSS MB at {n}", ("rss_mb",)),
                ("server peak RSS MB", ("peak_rss_mb",)),
                ("server KB per socket", ("kb_per_socket",)),
                ("Redis conns at 10 sockets", ("redis_connections_at_10",)),
                (f"Redis conns at {n}", ("redis_connections",)),
                ("added TTFT median ms, 10 sockets", ("added_ttft_ms_at_10", "median")),
                ("added TTFT p99 ms, 10 sockets", ("added_ttft_ms_at_10", "p99")),
                ("added done p99 ms, 10 sockets", ("added_done_ms_at_10", "p99")),
            )
        ]
    return rows


def _cost_rows(p: dict[str, Any], b: dict[str, Any] | None) -> list[str]:
    """CPU seconds (and per reply) and peak RSS of each process, per target."""
    rows: list[str] = []
    for target, r in (("Parley", p), ("baseline", b)):
        if r is None or "cpu_s" not in r:
            continue
        rows.append(
            f"  {target} CPU s (ms/reply): "
            + ", ".join(
                f"{n} {s:.2f} ({_fmt(r['cpu_ms_per_reply'][n])})" for n, s in r["cpu_s"].items()
            )
        )
        rows.append(
            f"  {target} peak RSS MB: "
            + ", ".join(f"{n} {_fmt(r['peak_rss_mb'][n])}" for n in r["peak_rss_mb"])
        )
    return rows


def _redis_rows(redis: dict[str, Any] | None) -> list[str]:
    """Redis's commands and memory per reply, and the connections each process held."""
    if not redis:
        return []
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(redis["by_command_per_reply"].items())[:8] if v)
    per_reply = redis["used_memory_bytes_per_reply"]
    return [
        f"  Redis per reply: {_fmt(redis['commands_per_reply'])} commands, counting those "
        f"run inside scripts ({top}); "
        f"memory {_fmt(per_reply)} bytes/reply, {redis['used_memory_mb']} MB used",
        "  Redis connections held (most during the phases): "
        + ", ".join(f"{k} {v}" for k, v in redis["connections"].items()),
    ]


def _sweep_rows(result: dict[str, Any]) -> list[str]:
    """The offered-load sweep, if the scenario ran one: per load, each target's event
    delay p99 and tokens delivered per second, and where each falls behind."""
    p, b = result["parley"], result.get("baseline") or {}
    if "sweep" not in p:
        return []
    theirs = {point["sessions"]: point for point in b.get("sweep", [])}
    rows = [
        f"  sweep: {'tokens/s offered':>16}{'delay p99 ms':>14}{'baseline':>10}"
        f"{'tokens/s':>10}{'baseline':>10}"
    ]
    for point in p["sweep"]:
        other = theirs.get(point["sessions"], {})
        rows.append(
            f"  {'':7}{ms(point['offered_tokens_per_s'], 0):>16}"
            f"{ms(point['event_delay_ms_p99']):>14}{ms(other.get('event_delay_ms_p99')):>10}"
            f"{ms(point['tokens_per_s'], 0):>10}{ms(other.get('tokens_per_s'), 0):>10}"
        )
    for name, r in (("Parley", p), ("baseline", b)):
        if "sweep" in r:
            at = r.get("falls_behind_tokens_per_s")
            rows.append(
                f"  {name} falls behind (p99 > 100 ms) at "
                + (f"{at:.0f} tokens/s offered" if at is not None else "no load of the sweep")
            )
    return rows


def _stacks_table(result: dict[str, Any]) -> str:
    o = result["options"]
    rows = [
        f"  stacks: the same bare FastAPI app; {o['sockets']} idle sockets, then "
        f"{o['messages']} echoes on each of 10",
        f"  {'':<30}{'KB/socket':>10}{'RSS MB':>8}{'opened/s':>10}{'µs/echo':>9}  echoed",
    ]
    for name, f in result["stacks"].items():
        if "error" in f:
            rows.append(f"  {name:<30}ERROR {f['error']}")
            continue
        rows.append(
            f"  {name:<30}{f['kb_per_socket']:>10.1f}{f['rss_mb']:>8.0f}{f['opened_per_s']:>10.0f}"
            f"{f['cpu_us_per_message']:>9.0f}  {f['echoed']}/{f['sent']}"
        )
    return "\n".join(rows)


def _real_model_table(result: dict[str, Any]) -> str:
    rows = [f"  {'ms':<20}{'median':>9}{'p95':>9}{'p99':>9}{'n':>5}"]
    for name, d in (
        ("direct first token", result["direct"]["first_token_ms"]),
        ("Parley first token", result["parley"]["first_token_ms"]),
        ("direct done", result["direct"]["done_ms"]),
        ("Parley done", result["parley"]["done_ms"]),
    ):
        rows.append(
            f"  {name:<20}{ms(d['median']):>9}{ms(d['p95']):>9}{ms(d['p99']):>9}{d['n']:>5}"
        )
    rows.append(f"  {'tokens/s a reply':<20}{'median':>9}{'p95':>9}{'p99':>9}{'n':>5}")
    for name, d in (
        ("direct", result["direct"]["tokens_per_s"]),
        ("Parley", result["parley"]["tokens_per_s"]),
    ):
        rows.append(
            f"  {name:<20}{ms(d['median']):>9}{ms(d['p95']):>9}{ms(d['p99']):>9}{d['n']:>5}"
        )
    return "\n".join(rows)


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: each scenario's targets, measured values and verdicts."""
    rows = ["| Scenario | Target | Measured | Met |", "| --- | --- | --- | --- |"]
    for result in results:
        scenario = SCENARIOS[result["scenario"]]
        if scenario.kind == "real-model":
            d, p = result["direct"], result["parley"]
            ((check, _, ok),) = verdicts(scenario, result)
            rows.append(
                f"| `real-model` | {check.label} {check.op} {check.threshold:g} | "
                f"{ms(p['first_token_ms']['median'])} / {ms(d['first_token_ms']['median'])} ms = "
                f"{_fmt(result.get('first_token_ratio'))} | "
                f"{'yes' if ok else 'no' if ok is not None else 'n/a'} |"
            )
            continue
        if scenario.kind == "stacks":
            rows += [
                f"| `stacks` | {name}: KB per idle socket, µs CPU per echo (no target) | "
                + (
                    f"{_fmt(f['kb_per_socket'])}, {_fmt(f['cpu_us_per_message'])}"
                    if "error" not in f
                    else "error"
                )
                + " | - |"
                for name, f in result["stacks"].items()
            ]
            continue
        for check, value, ok in verdicts(scenario, result):
            rows.append(
                f"| `{scenario.name}` | {check.label} {check.op} "
                f"{f'{check.threshold:g} {check.unit}'.rstrip()} | {_fmt(value, check.unit)} | "
                f"{'yes' if ok else 'no' if ok is not None else 'n/a'} |"
            )
    notes = [
        f"- `{r['scenario']}`: " + "; ".join(r["overrides"]) for r in results if r.get("overrides")
    ]
    if notes:
        rows += ["", "Parley's settings changed from its defaults, and why:", "", *notes]
    return "\n".join(rows) + "\n"
