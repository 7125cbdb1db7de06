"""Text as it may be shown to a terminal, a log or a host: control characters written as escapes.

Untrusted text (a backend's error body, a step, an id from an older file) is quoted in logs, in `handbook show` and
in the errors the model's host displays. A newline in it forges a line that reads as ours, and terminal escapes (OSC
sets the window title, CSI recolours or clears the screen) act on whatever prints it. So every control character
(Unicode category Cc, plus the line and paragraph separators and the bidi controls, which reorder a line) is written
as \\n, \\r, \\t, \\xNN or \\uNNNN.
"""

from __future__ import annotations

import unicodedata

from skillorchestra.handbook.models import BIDI_CONTROLS

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BREAKING = [chr(code) for code in range(0x110) if unicodedata.category(chr(code)) == "Cc"]
_BREAKING += ["\u2028", "\u2029", *BIDI_CONTROLS]


def _escape(c: str) -> str:
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


ONE_LINE = str.maketrans({c: _escape(c) for c in _BREAKING})
KEEP_NEWLINES = str.maketrans({c: _escape(c) for c in _BREAKING if c != "\n"})


def one_line(text: str) -> str:
    """`text` with its control characters written as escapes: one line, inert on a terminal."""
    return text.translate(ONE_LINE)
