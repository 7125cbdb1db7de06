"""Which strings are secrets, and masking them in text that leaves the server (tool results, errors, logs).

Why a rule by name as well as the keys we pass: a backend echoes whatever key it received, and we do not always
know which one that was (litellm looks up a provider's key itself when an agent names none; a tool server reads
its own variables). So besides the keys a backend names, the values of every environment variable whose name says
it holds a secret are masked too: cheap (one pass over the environment per call) and it cannot miss a key that
came from the environment under a conventional name.

Values found by name must be at least ``MIN_NAMED_LENGTH`` characters, so that a short value (``TOKEN=1``) does not
mangle ordinary text; keys a backend names explicitly are masked from ``MIN_EXPLICIT_LENGTH`` characters.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"
MIN_EXPLICIT_LENGTH = 4
MIN_NAMED_LENGTH = 8

# OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, WATSONX_APIKEY, HF_TOKEN, CLIENT_SECRET, DB_PASSWORD (suffixes), and the
# words TOKEN/SECRET/PASSWORD/CREDENTIALS anywhere (AWS_BEARER_TOKEN_BEDROCK, VERTEXAI_CREDENTIALS)
_SECRET_NAME = re.compile(
    r"(?:_KEY|APIKEY|_TOKEN|_SECRET|_PASSWORD)$|(?:^|_)(?:TOKEN|SECRET|PASSWORD|CREDENTIALS)(?:_|$)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret."""
    return _SECRET_NAME.search(name) is not None


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values (of at least MIN_NAMED_LENGTH characters) of the variables whose names mark them as secrets, and the
    password of every URL-valued variable (DATABASE_URL=postgres://app:PASSWORD@db/app)."""
    env = os.environ if environ is None else environ
    named = [value for name, value in env.items() if len(value) >= MIN_NAMED_LENGTH and is_secret_name(name)]
    return named + [password for value in env.values() if (password := url_password(value))]


def url_password(value: str) -> str | None:
    """The password in a URL's user:password@ part, if the value is such a URL."""
    if "://" not in value or "@" not in value:
        return None
    try:
        return urlsplit(value.strip()).password or None
    except ValueError:
        return None


def passed_secrets(names: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Of the variables handed to a tool server (its env_vars), the values that may be secrets: a secret's name,
    or a value shaped like a token (16+ characters, no space; with a '/' only base64-like: see _token_shaped).
    env_vars also carries plain settings (WORKSPACE_DIR=/home/me/project, NODE_ENV=production), which masking would
    cut out of every answer."""
    env = os.environ if environ is None else environ
    values = [(name, env[name]) for name in names if name in env]
    passwords = [password for _, value in values if (password := url_password(value))]
    return [value for name, value in values if is_secret_name(name) or _token_shaped(value)] + passwords


_BASE64ISH = re.compile(r"[A-Za-z0-9+/]+={0,2}")  # standard base64 (base64url has no '/'): not Qwen/Qwen2-7B-x


def _token_shaped(value: str) -> bool:
    """16+ characters without a space; one holding a '/' only when it reads as base64 rather than a path: no leading
    '/', '.' or '~', base64's characters only, with digits and both cases (QA: SEARCH_AUTH=Zk9/aB3+xYq2LmN8pQrS,
    an AWS-style secret, was echoed back in clear)."""
    if len(value) < 16 or any(c.isspace() for c in value):
        return False
    if "/" not in value:
        return True
    return (
        value[0] not in "/.~"
        and _BASE64ISH.fullmatch(value) is not None
        and any(c.isdigit() for c in value)
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
    )


_HANDED_OUT: set[str] = set()  # the keys backend calls were given in this process (remember_keys, log_secrets)


def remember_keys(keys: Iterable[str | None]) -> None:
    """Keys a backend call is given, masked in every log line from now on (`log_secrets`): a library may log what a
    backend sent, where the call's own scrub never sees it. Real keys only (review: remembering every value a call
    masked, such as a token-shaped model name, would mangle later log lines)."""
    _HANDED_OUT.update(k for k in keys if k and len(k) >= MIN_NAMED_LENGTH)


def secrets_to_mask(explicit: Iterable[str | None] = (), environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The explicit keys plus the environment's secrets: distinct, longest first (a key containing another is
    masked whole). Compute it once per call and pass it to ``scrub``."""
    found = {s for s in explicit if s and len(s) >= MIN_EXPLICIT_LENGTH}
    found.update(environment_secrets(environ))
    found.update(variant for secret in list(found) for variant in encoded(secret))
    return tuple(sorted(found, key=len, reverse=True))


@functools.lru_cache(maxsize=256)  # every log line asks again for the same few keys
def encoded(secret: str) -> frozenset[str]:
    """The forms a backend may echo a key in besides its own: URL-encoded (in a query string or a form) and base64
    (a Basic header, "user:<key>"). Base64 encodes three bytes at a time, so the key's characters depend on where it
    starts: for each of the three alignments, the part of its encoding that depends on the key alone (review: only
    a key at the start of the encoded text was found). QA: an echo of either form passed through unmasked."""
    forms = {quote(secret, safe=""), quote_plus(secret)}
    raw = secret.encode()
    for shift in range(3):
        text = base64.b64encode(b"\0" * shift + raw).decode()
        core = text[4 if shift else 0 : (shift + len(raw)) // 3 * 4]  # whole groups of the key's bytes only
        if len(core) >= MIN_NAMED_LENGTH:
            forms.add(core)
    return frozenset(forms - {secret})


def log_secrets() -> tuple[str, ...]:
    """What every log line is scrubbed of (server/log_format.py): the keys handed to backends so far and the
    environment's secrets. QA: a tool server printed its key on stdout, and the SDK's client logged the line,
    whole, in a traceback."""
    return secrets_to_mask(tuple(_HANDED_OUT))


def scrub(text: str, secrets: Sequence[str | None]) -> str:
    """Replace every secret value with *** (providers and tools sometimes echo a key in an error or an answer)."""
    for secret in secrets:
        if secret and len(secret) >= MIN_EXPLICIT_LENGTH and secret in text:
            text = text.replace(secret, MASK)
    return text
