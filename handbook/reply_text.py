"""A model's reply as the code that parses it expects: without the Markdown code fence models often wrap it in.

String operations only, never a regex: `^```(?:json)?\\s*(.*?)\\s*```$` backtracked cubically on "```" followed by
whitespace, so a judge reply of 4 KB held the server's event loop for 50 s (security review).
"""

from __future__ import annotations

from string import ascii_letters


def unfenced(text: str) -> str:
    """`text` stripped, without a leading ``` and its language word (```json) nor a trailing ```, each removed
    where present; what is inside is returned as it is, for a strict parser to accept or refuse."""
    body = text.strip()
    if body.startswith("```"):
        body = body[3:]
        body = body[len(body) - len(body.lstrip(ascii_letters)) :]  # the language word, e.g. json
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()
