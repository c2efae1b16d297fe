"""Find AVX-512 and AMX instructions in machine code, for the portability test.

A binary built for x86-64-v3 (AVX2) must not execute AVX-512 or AMX instructions on its
own: on a CPU without them (AMD EPYC with AVX2 only, say) it dies of SIGILL. Code that
uses them only behind a CPU check (a dispatched variant, named for its instruction set:
``FP16_L2SqrSIMD32_AVX512``, glibc's ``__memmove_evex_unaligned``) is allowed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# zmm registers, the upper 16 xmm/ymm registers and the opmask registers exist only
# with AVX-512 (EVEX encoding); tile* and tdp* are AMX.
AVX512_OR_AMX = re.compile(
    r"%zmm\d|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b|\btile(loadd|stored|zero|release|cfg)|\btdp[bf]"
)
DISPATCHED = re.compile(r"avx512|avx_512|evex|amx|skx|zen4", re.IGNORECASE)
#: OpenSSL's assembly routines (linked into the ``cryptography`` package's extension,
#: which PyJWT checks signatures with) that hold AVX-512 instructions and run only when
#: OpenSSL's own CPU check (``OPENSSL_ia32cap_P``) finds them: ``ChaCha20_ctr32`` picks
#: its 8xvl and 16x paths, ``poly1305_init`` its vpmadd52 blocks,
#: ``ossl_rsaz_avx512ifma_eligible`` the AMM52 multipliers and their windows,
#: ``ossl_aes_cfb128_vaes_eligible`` and ``ossl_vaes_vpclmulqdq_capable`` the VAES AES-CFB
#: and AES-GCM paths. Named for the routine, not for the instruction set.
OPENSSL_DISPATCHED = re.compile(
    r"^(ChaCha20_(8xvl|16x)|poly1305_blocks_vpmadd52(_4x|_8x)?|ossl_rsaz_amm52x\d+_x[12]_ifma256"
    r"|ossl_extract_multiplier_2x\d+_win5|ossl_aes_cfb128_vaes_(enc|dec)|(skip_)?iv_len_12_init_IV)$"
)
#: The lines of ``objdump -d`` that the scan reads (function headers, and what
#: :data:`AVX512_OR_AMX` matches), as a POSIX extended regular expression for ``grep``,
#: which drops the millions of other lines far faster than Python reads them.
_GREP = (
    r">:$|%zmm[0-9]|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|%k[0-7]\b"
    r"|\btile(loadd|stored|zero|release|cfg)|\btdp[bf]"
)


def avx512_functions(path: Path) -> dict[str, int]:
    """Functions of ``path`` holding AVX-512/AMX instructions: ``{symbol: instruction count}``.

    Disassembles with ``objdump -d`` (binutils), filtered by ``grep -E`` (:data:`_GREP`)
    before Python checks each line kept with :data:`AVX512_OR_AMX`. In a stripped
    binary an instruction is counted against the nearest symbol before it.

    Raises:
        subprocess.CalledProcessError: objdump failed (not an ELF file, say).
    """
    found: dict[str, int] = {}
    function = "?"
    with (
        subprocess.Popen(
            ["objdump", "-d", "--no-show-raw-insn", "-C", str(path)], stdout=subprocess.PIPE
        ) as objdump,
        subprocess.Popen(
            ["grep", "-E", _GREP],
            stdin=objdump.stdout,
            stdout=subprocess.PIPE,
            text=True,
            errors="replace",
        ) as grep,
    ):
        assert objdump.stdout is not None and grep.stdout is not None
        objdump.stdout.close()  # grep holds it now: objdump sees a closed pipe if grep dies
        for line in grep.stdout:
            if line.endswith(">:\n") and line[:1].isalnum():
                function = line.split("<", 1)[1][:-3]
            elif AVX512_OR_AMX.search(line):
                found[function] = found.get(function, 0) + 1
    if objdump.returncode:
        raise subprocess.CalledProcessError(objdump.returncode, ["objdump", str(path)])
    if grep.returncode > 1:  # 1: no line matched
        raise subprocess.CalledProcessError(grep.returncode, ["grep", str(path)])
    return found


def undispatched(found: dict[str, int]) -> dict[str, int]:
    """The functions of ``found`` whose symbol does not name a dispatched instruction set."""
    return {
        name: n
        for name, n in found.items()
        if not (DISPATCHED.search(name) or OPENSSL_DISPATCHED.match(name))
    }
