"""Enough of a VT100 terminal to replay what a program wrote to it and read the result.

prompt_toolkit draws its prompt with relative cursor moves and erases; rich and the
client print plain lines. :class:`Screen` keeps every line ever shown (the scrollback
and the screen as one list, as a terminal of unlimited height would) and applies the
moves and erases, so a test reads lines as a person would have seen them, not bytes.
"""

from __future__ import annotations

import re

# CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ST), other ESC pairs.
_CSI = re.compile(r"\x1b\[([?>=]?)([0-9;]*)([ -/]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_ESC = re.compile(r"\x1b[()][0-9A-Za-z]|\x1b[^\[\]]")


class Screen:
    """A terminal ``columns`` wide with no bottom: lines are never scrolled away."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.rows: list[list[str]] = [[]]
        self.row = 0
        self.column = 0

    def lines(self) -> list[str]:
        """Every line shown, trailing blanks removed."""
        return ["".join(cells).rstrip() for cells in self.rows]

    def feed(self, text: str) -> None:
        """Apply ``text`` as the terminal would."""
        i = 0
        while i < len(text):
            for pattern in (_CSI, _OSC, _ESC):
                if match := pattern.match(text, i):
                    if pattern is _CSI:
                        self._csi(match[2], match[4])
                    i = match.end()
                    break
            else:
                self._char(text[i])
                i += 1

    def _char(self, char: str) -> None:
        if char == "\r":
            self.column = 0
        elif char == "\n":
            self._move_to(self.row + 1)
        elif char == "\b":
            self.column = max(self.column - 1, 0)
        elif char >= " ":
            if self.column >= self.columns:  # autowrap, deferred to the next character
                self._move_to(self.row + 1)
                self.column = 0
            cells = self.rows[self.row]
            cells.extend(" " * (self.column + 1 - len(cells)))
            cells[self.column] = char
            self.column += 1

    def _move_to(self, row: int) -> None:
        self.row = max(row, 0)
        while len(self.rows) <= self.row:
            self.rows.append([])

    def _csi(self, params: str, final: str) -> None:
        n = int(params.split(";")[0] or 0)
        cells = self.rows[self.row]
        if final == "A":
            self._move_to(self.row - max(n, 1))
        elif final == "B":
            self._move_to(self.row + max(n, 1))
        elif final == "C":
            self.column = min(self.column + max(n, 1), self.columns)
        elif final == "D":
            self.column = max(self.column - max(n, 1), 0)
        elif final == "G":
            self.column = max(n, 1) - 1
        elif final == "K":  # erase in line: 0 to its end, 1 to the cursor, 2 all of it
            if n == 0:
                del cells[self.column :]
            elif n == 1:
                cells[: self.column + 1] = " " * min(self.column + 1, len(cells))
            else:
                cells.clear()
        elif final == "J" and n == 0:  # erase below: the rest of this line and every line after
            del cells[self.column :]
            del self.rows[self.row + 1 :]
        # Styles (m), modes (h, l), cursor reports (n) and the rest change no text.
