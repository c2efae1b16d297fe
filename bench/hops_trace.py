"""``python -m bench.hops_trace --control DIR --name NAME MODULE [ARGS...]``: run
``python -m MODULE ARGS...`` under a profiler that records the calls between Parley's
modules while a control file says so. Parley's code is not changed: the profiler is
installed (``sys.setprofile``, ``threading.setprofile``) before the module runs
(``runpy``), and does nothing but test a flag while recording is off.

Recording is on while ``DIR/recording`` exists; a thread polls for it every 5 ms. On
turning on it writes ``DIR/NAME.on``; on turning off it writes ``DIR/NAME.json``:
``{"name", "pid", "calls": [[caller, callee, function, count], ...], "scripts":
{file: count}}`` (see :class:`HopTracer`). :mod:`bench.hops` drives it and counts.

What is recorded, exactly (the definition :mod:`bench.hops` counts hops by):

- A *call* is a profile ``call`` event that starts a Python function whose code lives
  in a Parley module (a ``.py`` file under one of :data:`PACKAGES`). Resuming a
  generator or coroutine after a ``yield``/``await`` is no new call: only the event at
  its first instruction counts (its ``f_lasti`` at the code's ``RESUME 0``).
- The *caller* of a call is the Parley module of the nearest frame below it on the
  stack, skipping frames of other code (libraries, the standard library), and looking
  no further than the first frame of a scheduler (asyncio, uvloop, threading,
  concurrent.futures): below that, frames belong to another task or thread.
- A task's root coroutine starts from the event loop, so its stack holds no caller. It
  is attributed to the module that handed the coroutine to asyncio (``create_task``,
  ``ensure_future``, ``gather``, ...): the first Python function of asyncio or anyio
  that receives the unstarted coroutine as an argument records the caller of that call.
- A call with no caller (an entry: a route called by the ASGI framework, a callback run
  by the loop, a function run in a thread, a task created by library code) has caller
  ``None``.
- A Lua script run is a call of redis-py's ``evalsha``; its ``sha`` is named by the
  ``.lua`` file whose text ends the script registered with that hash (redis-py's script
  objects, found at dump time).
"""

from __future__ import annotations

import argparse
import dis
import gc
import hashlib
import inspect
import json
import os
import runpy
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

#: Parley's packages: a module of one of these is "Parley code".
PACKAGES = frozenset({"server", "worker", "storage", "protocol", "runtime"})
#: Code of these (path parts) runs other tasks' or threads' frames: the stack walk stops.
SCHEDULERS = ("asyncio", "uvloop", "concurrent")
SCHEDULER_FILES = ("threading.py",)
#: Code of these hands coroutines to the event loop (argument inspected, see above).
SPAWNERS = ("asyncio", "anyio")

_GENERATOR_FLAGS = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ITERABLE_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
)
_RESUME = dis.opmap["RESUME"]

Call = tuple[str | None, str, str]  # (caller module, callee module, callee function)


class HopTracer:
    """Records calls into the Parley modules under ``root`` while :attr:`on`.

    Args:
        root: the directory holding the packages (paths are resolved).
        packages: top-level package names that are "Parley code".

    Install :meth:`profile` with ``sys.setprofile``/``threading.setprofile``; set
    :attr:`on`; read :attr:`calls` (``(caller, callee, function) -> count``) and
    :attr:`shas` (``sha -> count``) after.
    """

    def __init__(self, root: Path, packages: frozenset[str] = PACKAGES) -> None:
        self.root = str(root.resolve()) + os.sep
        self.packages = packages
        self.on = False
        self.calls: Counter[Call] = Counter()
        self.shas: Counter[str] = Counter()
        self._modules: dict[str, str | None] = {}
        self._kinds: dict[str, int] = {}  # filename -> 0 other, 1 scheduler, 2 spawner
        self._entries: dict[types.CodeType, int] = {}
        self._spawned: dict[int, tuple[types.FrameType, str | None]] = {}

    def reset(self) -> None:
        """Forget what was recorded."""
        self.calls = Counter()
        self.shas = Counter()
        self._spawned.clear()

    def module(self, code: types.CodeType) -> str | None:
        """The Parley module (dotted) that ``code`` belongs to, or None."""
        filename = code.co_filename
        try:
            return self._modules[filename]
        except KeyError:
            pass
        name = None
        if filename.startswith(self.root) and filename.endswith(".py"):
            parts = filename[len(self.root) : -3].split(os.sep)
            if parts[0] in self.packages:
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        self._modules[filename] = name
        return name

    def _kind(self, filename: str) -> int:
        kind = self._kinds.get(filename)
        if kind is None:
            parts = Path(filename).parts
            kind = 0
            if any(p in parts for p in SCHEDULERS) or parts[-1:] == SCHEDULER_FILES:
                kind = 1
            if any(p in parts for p in SPAWNERS):
                kind |= 2
            self._kinds[filename] = kind
        return kind

    def _first_instruction(self, code: types.CodeType) -> int:
        """The offset a frame of ``code`` is at when its function starts (-1: any)."""
        entry = self._entries.get(code)
        if entry is None:
            entry = -1
            if code.co_flags & _GENERATOR_FLAGS:
                raw = code.co_code
                entry = next(
                    i for i in range(0, len(raw), 2) if raw[i] == _RESUME and raw[i + 1] == 0
                )
            self._entries[code] = entry
        return entry

    def caller(self, frame: types.FrameType) -> str | None:
        """The Parley module ``frame`` was called from (see the module's docstring)."""
        root, below = frame, frame.f_back
        while below is not None:
            module = self.module(below.f_code)
            if module is not None:
                return module
            if self._kind(below.f_code.co_filename) & 1:
                break
            root, below = below, below.f_back
        spawned = self._spawned.get(id(root))
        return spawned[1] if spawned is not None and spawned[0] is root else None

    def profile(self, frame: types.FrameType, event: str, arg: Any) -> None:
        """The profile function (``sys.setprofile``)."""
        if not self.on or event != "call":
            return
        code = frame.f_code
        module = self.module(code)
        if module is not None:
            entry = self._first_instruction(code)
            if entry < 0 or frame.f_lasti == entry:
                self.calls[(self.caller(frame), module, code.co_qualname)] += 1
        elif code.co_name == "evalsha":
            self.shas[str(frame.f_locals.get("sha"))] += 1
        elif self._kind(code.co_filename) & 2:
            self._note_spawn(frame, code)

    def _note_spawn(self, frame: types.FrameType, code: types.CodeType) -> None:
        local = frame.f_locals
        given = code.co_argcount + code.co_kwonlyargcount
        given += bool(code.co_flags & inspect.CO_VARARGS)  # gather(*coros)
        for name in code.co_varnames[:given]:
            values = local.get(name)
            for value in values if isinstance(values, tuple) else (values,):
                started = getattr(value, "cr_frame", None)
                if (
                    isinstance(value, types.CoroutineType)
                    and started is not None
                    and id(started) not in self._spawned
                    and inspect.getcoroutinestate(value) == inspect.CORO_CREATED
                ):
                    self._spawned[id(started)] = (started, self.caller(frame))


def script_names(root: Path) -> dict[str, str]:
    """``sha -> file`` for every script redis-py holds registered in this process: the
    ``.lua`` file under ``root`` whose text ends the script's (the longest such)."""
    files = {p: p.read_text(encoding="utf-8").strip() for p in root.rglob("*.lua")}
    files = {p: text for p, text in files.items() if ".venv" not in p.parts and text}
    names: dict[str, str] = {}
    for obj in gc.get_objects():
        if type(obj).__name__ not in {"Script", "AsyncScript"}:
            continue
        text = getattr(obj, "script", None)
        if isinstance(text, bytes):
            text = text.decode()
        if not isinstance(text, str):
            continue
        sha = getattr(obj, "sha", None) or hashlib.sha1(text.encode()).hexdigest()
        ends = [p for p, body in files.items() if text.strip().endswith(body)]
        if ends:
            names[sha] = max(ends, key=lambda p: len(files[p])).name
    return names


def dump(tracer: HopTracer, root: Path, name: str) -> dict[str, Any]:
    """What ``tracer`` recorded, as written to ``NAME.json``."""
    named = script_names(root)
    scripts: Counter[str] = Counter()
    for sha, count in tracer.shas.items():
        scripts[named.get(sha, sha)] += count
    return {
        "name": name,
        "pid": os.getpid(),
        "calls": [[*call, count] for call, count in sorted(tracer.calls.items(), key=str)],
        "scripts": dict(sorted(scripts.items())),
    }


def _poll(tracer: HopTracer, control: Path, root: Path, name: str) -> None:
    flag = control / "recording"
    while True:
        wanted = flag.exists()
        if wanted and not tracer.on:
            tracer.reset()
            tracer.on = True
            (control / f"{name}.on").write_text("on")
        elif not wanted and tracer.on:
            tracer.on = False
            out = control / f"{name}.json"
            out.with_suffix(".tmp").write_text(json.dumps(dump(tracer, root, name)))
            out.with_suffix(".tmp").rename(out)
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> None:
    """Install the profiler and the control thread, then run the module as ``__main__``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hops_trace")
    parser.add_argument("--control", type=Path, required=True, help="the control directory")
    parser.add_argument("--name", required=True, help="this process's name in the results")
    parser.add_argument("module", help="the module to run, e.g. server")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    root = Path.cwd()
    tracer = HopTracer(root)
    threading.Thread(
        target=_poll, args=(tracer, options.control, root, options.name), daemon=True
    ).start()  # before threading.setprofile: the poller itself is not profiled
    threading.setprofile(tracer.profile)
    sys.setprofile(tracer.profile)
    sys.argv = [options.module, *options.args]
    runpy.run_module(options.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
