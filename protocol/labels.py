"""Labels (a person's name, a conversation's title): one line of plain text that shows
what it says.

Control characters (Unicode category ``Cc``: line breaks, tabs, ESC) would break a label
out of its line in a list, a heading or a terminal, and format characters (``Cf``: the
bidi overrides and isolates, zero-width spaces, soft hyphens) can make it read as other
text than it holds (``U+202E`` shows ``txt.exe`` as ``exe.txt``). Both are refused in
labels a client sends and stripped from titles the model writes. The zero-width joiner
and non-joiner are kept: emoji sequences and several scripts (Persian, Indic) need them,
and they reorder nothing.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories no label may hold: controls and format characters.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf"})
#: Format characters a label keeps: the zero-width non-joiner and joiner.
KEPT = frozenset({"\u200c", "\u200d"})


def is_hidden(char: str) -> bool:
    """Whether ``char`` (one character) may not stand in a label."""
    return char not in KEPT and unicodedata.category(char) in HIDDEN_CATEGORIES


def hidden_characters(text: str) -> list[str]:
    """The characters of ``text`` no label may hold, each once, as ``U+XXXX``, in order."""
    found = dict.fromkeys(f"U+{ord(c):04X}" for c in text if is_hidden(c))
    return list(found)


def strip_hidden(text: str) -> str:
    """``text`` with each character no label may hold replaced by a space."""
    return "".join(" " if is_hidden(c) else c for c in text)
