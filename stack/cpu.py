"""Can this CPU run the embedded model's prebuilt runtime?

``xllamacpp``'s x86-64 wheel is built for x86-64-v3 (AVX2, FMA, F16C) with no AVX-512
or AMX. On a CPU without one of those it would die of SIGILL at its first matrix
product, so the stack checks the CPU's flags before it starts anything.
"""

from __future__ import annotations

import platform
from pathlib import Path

REQUIRED_X86_FLAGS = ("avx2", "fma", "f16c")
"""``/proc/cpuinfo`` flags the prebuilt runtime executes unconditionally."""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor in ``cpuinfo`` (the text of ``/proc/cpuinfo``)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            return set(value.split())
    return set()


def missing_cpu_flags(cpuinfo: str | None = None, machine: str | None = None) -> list[str]:
    """The required flags this CPU lacks, in ``REQUIRED_X86_FLAGS`` order; [] when it can run.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; read from the system when None.
        machine: ``platform.machine()``; only x86-64 is checked, other architectures
            (whose wheels carry their own baseline) return [].

    An x86-64 system without a readable ``/proc/cpuinfo`` (not Linux) is not checked.
    """
    machine = machine if machine is not None else platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return []
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
    flags = cpu_flags(cpuinfo)
    return [flag for flag in REQUIRED_X86_FLAGS if flag not in flags]


def unsupported_cpu_message(missing: list[str]) -> str:
    """What to tell a person whose CPU lacks ``missing`` flags, with the ways out."""
    return (
        f"this CPU lacks {', '.join(f.upper() for f in missing)}, which the embedded model's "
        "prebuilt runtime (x86-64-v3: AVX2, FMA, F16C) needs. Point Parley at another model "
        "server instead: set LLM_BASE_URL to any OpenAI-compatible API (llama.cpp, vLLM, TGI, "
        "...), or HF_TOKEN to use the Hugging Face router."
    )
