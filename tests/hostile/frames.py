"""Hypothesis strategies of hostile client frames for ``WS /chat``.

A frame is ``(kind, data)``: ``"text"`` (a ``str``; one holding lone surrogates goes out
as the raw bytes ``surrogatepass`` gives, so the text frame is not UTF-8) or
``"binary"`` (``bytes``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

Frame = tuple[Literal["text", "binary"], str | bytes]

#: Every code point, lone surrogates included.
_ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(_ANY_CHAR, max_size=20)
)
_json_value = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_types = st.sampled_from(["message", "resume", "stop"]) | st.text(max_size=12) | _json_value
_stream_ids = st.from_regex(r"\A[0-9]{1,25}-[0-9]{1,25}\Z") | st.text(_ANY_CHAR, max_size=30)


def _dumps(value: Any) -> str:
    # ensure_ascii escapes a lone surrogate as \ud800, as a client's JSON encoder would.
    return json.dumps(value, ensure_ascii=True)


def _nested(depth: int, shape: str) -> str:
    if shape == "array":
        return "[" * depth + "]" * depth
    if shape == "object":
        return '{"a":' * depth + "1" + "}" * depth
    if shape == "content":
        return '{"type":"message","content":' + "[" * depth + "]" * depth + "}"
    return "{" * depth  # unclosed


_commands = st.fixed_dictionaries(
    {"type": _types},
    optional={"content": _json_value, "after": _stream_ids | _json_value, "x": _json_value},
).map(_dumps)
_surrogates_in_json = st.builds(
    lambda head, lone, kind: _dumps({"type": kind, "content": head + lone, "after": lone}),
    st.text(max_size=20),
    st.text(_SURROGATE, min_size=1, max_size=3),
    st.sampled_from(["message", "resume"]),
)
_deep = st.builds(
    _nested, st.integers(10, 20_000), st.sampled_from(["array", "object", "content", "open"])
)
_huge_numbers = st.builds(
    lambda digits, kind: (
        f'{{"type":"message","content":{digits}}}'
        if kind == "content"
        else f'{{"type":"resume","after":{digits}}}'
        if kind == "after"
        else digits
    ),
    st.integers(1, 6000).map(lambda n: "9" * n)
    | st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-0", "1" * 4301]),
    st.sampled_from(["content", "after", "bare"]),
)
_huge_strings = st.builds(
    lambda n, as_json: _dumps({"type": "message", "content": "x" * n}) if as_json else "y" * n,
    st.integers(3_000, 100_000),
    st.booleans(),
)
_raw_surrogates = st.builds(
    lambda head, lone, tail: head + lone + tail,
    st.text(max_size=20),
    st.text(_SURROGATE, min_size=1, max_size=3),
    st.text(max_size=20),
)
_resumes = st.builds(lambda after: _dumps({"type": "resume", "after": after}), _stream_ids)

FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("text"), st.text(_ANY_CHAR, max_size=300)),
    st.tuples(st.just("text"), _raw_surrogates),
    st.tuples(st.just("text"), _json_value.map(_dumps)),
    st.tuples(st.just("text"), _commands),
    st.tuples(st.just("text"), _surrogates_in_json),
    st.tuples(st.just("text"), _deep),
    st.tuples(st.just("text"), _huge_numbers),
    st.tuples(st.just("text"), _huge_strings),
    st.tuples(st.just("text"), _resumes),
)


#: Frames drawn per Hypothesis example: drawing lists is several times faster.
_BATCH = 50


def generate(count: int, seed: int) -> list[Frame]:
    """At least ``count`` frames drawn by Hypothesis (generation only), reproducible by
    ``seed``."""
    frames: list[Frame] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=-(-count // _BATCH),
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(FRAMES, min_size=_BATCH, max_size=_BATCH))
    def collect(batch: list[Frame]) -> None:
        frames.extend(batch)

    collect()
    return frames


# -- handshake headers ------------------------------------------------------------------

#: Text a header may carry (aiohttp sends headers as Latin-1): printable, and the rest.
_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
_PORTS = st.one_of(st.integers(-5, 70_000).map(str), st.sampled_from(["", "abc", "0x50", "٣"]))
_HOSTS = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "evil.example", "", "::1"]),
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
    _HEADER_TEXT,
)
_AUTHORITIES = st.one_of(
    st.tuples(_HOSTS, _PORTS).map(lambda hp: f"{hp[0]}:{hp[1]}"), _HOSTS, _HEADER_TEXT
)
_ORIGINS = st.one_of(
    st.tuples(st.sampled_from(["http", "https", "ws", "null", "", "file"]), _AUTHORITIES).map(
        lambda sa: f"{sa[0]}://{sa[1]}"
    ),
    st.sampled_from(["null", "http://[::1", "http://127.0.0.1:99999", "http://x:abc"]),
    _HEADER_TEXT,
)
_FORWARDED = st.lists(
    st.one_of(st.ip_addresses().map(str), _HEADER_TEXT, st.just("random-7")), max_size=4
).map(", ".join)

#: One handshake's headers: any of Origin, Host, X-Forwarded-For, Authorization.
Handshake = dict[str, str]
HANDSHAKES = st.fixed_dictionaries(
    {},
    optional={
        "Origin": _ORIGINS,
        "Host": _AUTHORITIES,
        "X-Forwarded-For": _FORWARDED,
        "Authorization": st.one_of(_HEADER_TEXT, _HEADER_TEXT.map("Bearer {}".format)),
    },
)


def generate_handshakes(count: int, seed: int) -> list[Handshake]:
    """``count`` sets of handshake headers drawn by Hypothesis, reproducible by ``seed``."""
    found: list[Handshake] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(HANDSHAKES)
    def collect(headers: Handshake) -> None:
        found.append(headers)

    collect()
    return found
