"""Text as it may be shown to a terminal, a log or a host: control characters written as escapes.

Untrusted text (a backend's error body, a step, an id from an older file) is quoted in logs, in `handbook show` and
in the errors the model's host displays. A newline in it forges a line that reads as ours, and terminal escapes (OSC
sets the window title, CSI recolours or clears the screen) act on whatever prints it. So every control character
(Unicode category Cc, plus the line and paragraph separators) is written as \\n, \\r, \\t or \\xNN.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_BREAKING = [chr(code) for code in range(0x110) if unicodedata.category(chr(code)) == "Cc"] + ["\u2028", "\u2029"]
ONE_LINE = str.maketrans({c: _NAMED.get(c, f"\\x{ord(c):02x}") for c in _BREAKING})
KEEP_NEWLINES = str.maketrans({c: _NAMED.get(c, f"\\x{ord(c):02x}") for c in _BREAKING if c != "\n"})


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes: one line, inert on a terminal."""
    return text.translate(ONE_LINE)
