"""``python -m bench.hops``: the hop counting on a toy call graph whose figures are known,
and one small run against real processes, checked for sanity only."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bench.hops import count, main
from bench.hops_trace import HopTracer

TOY = {
    "toy/__init__.py": "",
    "toy/a.py": """
        import asyncio
        from toy import b, c
        import elsewhere

        def run():
            b.one()
            b.one()
            asyncio.run(main())

        async def main():
            await b.slow()
            await asyncio.create_task(b.spawned())
            await asyncio.gather(b.spawned(), b.spawned())
            sorted([3, 1, 2], key=c.key)
            elsewhere.call(c.leaf)
            asyncio.get_running_loop().call_soon(c.leaf)
            await asyncio.sleep(0)
            await asyncio.to_thread(c.leaf)
        """,
    "toy/b.py": """
        import asyncio
        from toy import c

        def one():
            helper()
            c.leaf()

        def helper():
            pass

        async def slow():
            await asyncio.sleep(0)
            c.leaf()
            await asyncio.sleep(0)

        async def spawned():
            await asyncio.sleep(0)
        """,
    "toy/c.py": """
        def leaf():
            pass

        def key(x):
            return x
        """,
    "elsewhere.py": """
        def call(f):
            return f()
        """,
}


def test_hops_of_a_toy_call_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, source in TOY.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    from toy import a  # type: ignore[import-not-found]  # written just above

    tracer = HopTracer(tmp_path, frozenset({"toy"}))
    tracer.on = True
    threading.setprofile(tracer.profile)
    sys.setprofile(tracer.profile)
    try:
        a.run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]  # None unsets it
    figures = count((*call, times) for call, times in tracer.calls.items())

    # a -> b: one() twice, slow(), spawned() by create_task and twice by gather; resuming
    # slow() and spawned() after their sleeps is no new call. b -> c: leaf() from each
    # one() and from slow(). a -> c: key() 3 times from sorted() (no Python frame between),
    # leaf() through elsewhere.call (another package's frame is skipped).
    assert figures["edges"] == {"toy.a -> toy.b": 6, "toy.a -> toy.c": 4, "toy.b -> toy.c": 3}
    assert figures["hops"] == 13
    assert figures["visits"] == {"toy.c": 7, "toy.b": 6}
    # helper() twice; main() from asyncio.run, handed over by a.run.
    assert figures["internal"] == 3
    # run() from the test; leaf() as a loop callback and in a thread.
    assert figures["entered"] == {"toy.c:leaf": 2, "toy.a:run": 1}
    assert figures["entries"] == 3
    assert figures["modules"] == ["toy.a", "toy.b", "toy.c"]


@pytest.mark.system
@pytest.mark.timeout(180)
def test_one_message_crosses_modules_and_runs_its_scripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--tokens", "3", "--delay-ms", "20", "--repeat", "1", "--quiet-ms", "200"]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    (path,) = tmp_path.glob("hops-*.json")
    result = json.loads(path.read_text())
    message = result["message"]
    assert set(message) == {"server-1", "worker-1", "total"}
    total = message["total"]
    assert message["server-1"]["hops"] > 0 and message["worker-1"]["hops"] > 0
    assert total["hops"] == message["server-1"]["hops"] + message["worker-1"]["hops"]
    assert total["hops"] == sum(total["visits"].values()) == sum(total["edges"].values())
    assert {"server.commands", "worker.generation"} <= set(total["modules"])
    assert total["visits"]["server.commands"] >= 1 and total["visits"]["worker.generation"] >= 1
    assert message["server-1"]["scripts"]["enqueue.lua"] == 1
    assert message["worker-1"]["scripts"]["begin.lua"] == 1
    assert message["worker-1"]["scripts"]["finish.lua"] == 1
    assert result["log_errors"] == []
    assert path.with_suffix(".txt").read_text() in capsys.readouterr().out
