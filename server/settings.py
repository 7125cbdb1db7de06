"""Server configuration: where the handbook lives and how the server behaves, from flags and environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from skillorchestra.handbook.errors import InvalidInput, first_problem
from skillorchestra.handbook.service import HandbookSettings

Transport = Literal["stdio", "sse", "http"]
ENV_NAMES = {
    "token": "SKILLORCHESTRA_TOKEN",
    "decision_ttl_s": "SKILLORCHESTRA_DECISION_TTL",
    "matcher": "SKILLORCHESTRA_MATCHER",
    "forgetting": "SKILLORCHESTRA_FORGETTING",
    "store_step_text": "SKILLORCHESTRA_STORE_TEXT",
}


def default_db_path() -> Path:
    """`SKILLORCHESTRA_DB`, else the user data directory (interface.md)."""
    env = os.environ.get("SKILLORCHESTRA_DB")
    if env is not None and env != "" and (not env.strip() or env != env.strip()):  # QA: "   " made a file of that name
        from skillorchestra.handbook.errors import InvalidInput

        raise InvalidInput("SKILLORCHESTRA_DB", env, "a database file path without blanks at its ends")
    if env:
        return Path(env).expanduser()
    import platformdirs  # only when no --db or SKILLORCHESTRA_DB names the file: not on every start

    return Path(platformdirs.user_data_dir("skillorchestra", appauthor=False)) / "handbook.db"


MAX_ENV_SECONDS = 1e9
_SECONDS = f"a positive number of seconds, at most {MAX_ENV_SECONDS:.0e} (about 31 years)"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(name, raw, _SECONDS) from None
    if not 0 < value <= MAX_ENV_SECONDS:  # also refuses inf and NaN, which would be stored as a decision's expiry
        raise InvalidInput(name, raw, _SECONDS)
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(name, raw, "1 or 0 (true/false, yes/no, on/off)")


class ServerSettings(BaseModel):
    db_path: Path = Field(default_factory=default_db_path)
    transport: Transport = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: str | None = Field(default=None, repr=False)
    allowed_hosts: list[str] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    decision_ttl_s: float = 86_400.0
    kappa: float = Field(default=2.0, gt=0.0)
    forgetting: float | None = Field(default=None, gt=0.0, le=1.0)
    store_step_text: bool = True
    max_fallbacks: int = Field(
        default=2, ge=0, le=20, description="next-best agents tried after an infrastructure error"
    )
    breaker_threshold: int = Field(default=3, ge=1, description="consecutive infrastructure failures that open it")
    breaker_cooldown_s: float = Field(default=30.0, ge=0.0, description="seconds before a half-open trial call")
    matcher: Literal["auto", "lexical", "semantic"] = Field(
        default="auto", description="skill inference: semantic (MiniLM) when its weights are installed, else lexical"
    )
    seed_example: bool = Field(default=False, description="load the shipped example handbook into a new database")

    @classmethod
    def from_env(cls, **overrides: object) -> ServerSettings:
        raw_token = os.environ.get("SKILLORCHESTRA_TOKEN", "")
        if raw_token and not raw_token.strip():  # spaces alone (an empty secret file): a mistake, not "no token"
            raise InvalidInput(
                "SKILLORCHESTRA_TOKEN",
                raw_token,
                "a token (the variable holds only whitespace, which would serve without one; unset it, or leave it "
                "empty, to serve loopback without a token)",
            )
        values: dict[str, object] = {
            # a secret file's trailing newline made every client's token wrong; empty is no token (loopback only)
            "token": raw_token.strip() or None,
            "decision_ttl_s": _env_float("SKILLORCHESTRA_DECISION_TTL", 86_400.0),
            "matcher": os.environ.get("SKILLORCHESTRA_MATCHER") or None,
            "forgetting": os.environ.get("SKILLORCHESTRA_FORGETTING") or None,
            # retention: SKILLORCHESTRA_STORE_TEXT=0 keeps step texts out of the database (decisions.text NULL)
            "store_step_text": _env_bool("SKILLORCHESTRA_STORE_TEXT", True),
        }
        from_environment = {k for k, v in values.items() if v is not None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        from_environment -= {k for k, v in overrides.items() if v is not None}
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
        except ValidationError as exc:
            where, value, expected = first_problem(exc)
            field = where.split(".")[0]
            if field in from_environment:  # name the variable the user set, not a flag they never typed
                raise InvalidInput(ENV_NAMES.get(field, field), value, expected) from None
            raise

    def handbook_settings(self) -> HandbookSettings:
        return HandbookSettings(
            kappa=self.kappa,
            forgetting=self.forgetting,
            decision_ttl_s=self.decision_ttl_s,
            store_step_text=self.store_step_text,
        )
