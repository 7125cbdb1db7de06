"""Agent connection settings, read only from a TOML file (never from an MCP tool).

Why only a file: a prompt-injected orchestrator must not be able to point an agent's ``api_base`` elsewhere
with someone's key, or make the server run a command. Keys never appear here either: ``api_key_env`` names
the environment variable that holds the key, and a field called ``api_key`` is rejected.

Format: one TOML table per agent under ``[agents]``. Quote ids that contain ``/`` or ``.`` (TOML would
otherwise split them into nested tables)::

    [agents."openai/gpt-4o-mini"]        # kind = "llm" is the default
    model = "openai/gpt-4o-mini"          # a litellm model string
    api_key_env = "OPENAI_API_KEY"        # the NAME of the variable, not the key
    input_per_mtok = 0.15                 # USD per million tokens (optional; else litellm's table)
    output_per_mtok = 0.60
    description = "cheap generalist"
    modes = ["code", "chat"]

    [agents.local-smol]
    model = "openai/smollm2"              # any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama)
    api_base = "http://127.0.0.1:18081/v1"
    timeout_s = 20
    max_output_tokens = 256               # caps each call's max_tokens (default 1024; lowered with a warning)
    concurrency = 1

    [agents.web-search]
    kind = "mcp"                          # a tool of another MCP server as an agent
    command = "python"                    # stdio ... or url = "http://127.0.0.1:9000/mcp" (streamable HTTP)
    args = ["search_server.py"]
    env_vars = ["SEARCH_API_KEY"]         # names of OUR variables passed to the child (it gets no others)
    tool = "search"
    text_argument = "query"               # the tool argument that receives the step text
    arguments = { max_results = 5 }       # fixed extra arguments
    cost_per_call_usd = 0.001             # optional; otherwise the agent has no token cost (0.0)

The list form ``[[agent]]`` with an ``id = "..."`` field is accepted too (same fields); an id defined twice
is an error. Fields: see ``LlmAgentConnection`` and ``McpAgentConnection``.

An optional judge grades delegated answers so that competence learns without the client reporting
(server/judge.py); it names one of the file's llm agents. Its settings travel with that agent's stored
connection (field ``judge``), so reloading the file replaces or removes the judge too::

    [judge]
    agent = "openai/gpt-4o-mini"          # an llm agent of this file
    style = "graded"                      # "graded": score 0..1 with partial credit; "binary": 0 or 1
    threshold = 0.5                       # optional: record success = (score >= threshold) instead of the score
    timeout_s = 20
    max_tokens = 32
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skillorchestra.handbook.errors import InvalidInput, first_problem, not_utf8
from skillorchestra.handbook.models import LIST_MAX, MAX_USD, Identifier, NewId
from skillorchestra.server.masking import MASK

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Field names that would put a secret in the file; each gets a pointed error instead of "unknown field".
# Words that make a field name a secret's (by word: max_output_tokens is not one): apikey, openai_api_key, api-keys,
# authorization, bearer... QA: all but the first few were refused as unknown fields, their value printed whole.
_SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "auth",
        "authorization",
        "bearer",
        "credential",
        "credentials",
    }
)
_SECRET_ENDINGS = (
    "api_keys",
    "session_token",
    "id_token",
    "passphrase",
    "ssh_key",
    "signing_key",
    "encryption_key",
    "cookie",
    "api_key",
    "apikey",
    "access_key",
    "secret_key",
    "private_key",
    "access_token",
    "auth_token",
    "api_token",
    "bearer_token",
    "refresh_token",
    "secret",
    "password",
    "passwd",
    "credentials",
)
_SECRET_ARGUMENTS = frozenset({"key", "token", "auth", "authorization", "bearer", "credential", *_SECRET_ENDINGS})
# Fields holding environment variable names: a wrong value there is often the key itself, so errors mask it.
_ENV_NAME_FIELDS = frozenset({"api_key_env", "env_vars", "bearer_token_env"})
# URL fields: a refused URL may carry credentials (user:password@, ?api-key=), so errors show it redacted.
_URL_FIELDS = frozenset({"api_base", "url"})

AgentId = NewId  # stripped as the handbook strips ids: [agents." m1 "] is the handbook's agent m1
EnvName = Annotated[str, Field(min_length=1, max_length=200, pattern=_ENV_NAME.pattern)]


def _check_url(value: str | None) -> str | None:
    """http(s) only, and no credentials in the URL: those belong in an environment variable."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("a URL without user:password@ (put credentials in an environment variable)")
    return value


def _check_api_base(value: str | None) -> str | None:
    """_check_url, and no query string or fragment: a key there leaks into every error message that quotes the
    URL, and litellm appends its path (/chat/completions) after the query anyway, so the request would be wrong."""
    value = _check_url(value)
    if value is not None and (urlsplit(value).query or urlsplit(value).fragment):
        raise ValueError(
            "a URL without ?query or #fragment: a key in a query string leaks into error messages, and litellm "
            "appends its path after the query anyway (put the key in an environment variable named by api_key_env)"
        )
    return value


def redacted_url(value: object) -> object:
    """A refused URL as an error may show it: user:password@, ?query and #fragment replaced by ***."""
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return "***"
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return parts._replace(
        netloc=netloc, query="***" if parts.query else "", fragment="***" if parts.fragment else ""
    ).geturl()


class _AgentBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # TOML has inf and nan

    id: AgentId
    description: str = Field(default="", max_length=2000)
    modes: tuple[Identifier, ...] = Field(default=(), max_length=LIST_MAX)  # checked here, before any file opens
    timeout_s: float = Field(default=30.0, gt=0, le=3600, strict=True)
    concurrency: int = Field(default=4, ge=1, le=1024, strict=True)

    def public_view(self) -> dict[str, Any]:
        """Everything, for display: there is no secret in these settings, only environment variable names."""
        return self.model_dump(mode="json")


class JudgeSettings(BaseModel):
    """The ``[judge]`` section: which llm agent grades delegated answers, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentId
    style: Literal["graded", "binary"] = "graded"
    threshold: float | None = Field(default=None, ge=0, le=1, strict=True)
    timeout_s: float = Field(default=20.0, gt=0, le=600, strict=True)
    max_tokens: int = Field(default=32, ge=1, le=4096, strict=True)


class LlmAgentConnection(_AgentBase):
    """An LLM reached through ``litellm.acompletion``."""

    kind: Literal["llm"] = "llm"
    model: str = Field(min_length=1, max_length=300)
    api_base: str | None = None
    api_key_env: EnvName | None = None
    # caps the max_tokens of every call, so one request cannot run up a budget; a larger request is lowered and the
    # delegate result warns (server/llm_backend.py)
    max_output_tokens: int = Field(default=1024, ge=1, le=1_000_000, strict=True)
    input_per_mtok: float | None = Field(default=None, ge=0, le=MAX_USD, strict=True)
    output_per_mtok: float | None = Field(default=None, ge=0, le=MAX_USD, strict=True)
    judge: JudgeSettings | None = None  # set from the [judge] section only, never in an agent's own table

    @field_validator("api_base")
    @classmethod
    def _api_base_url(cls, value: str | None) -> str | None:
        return _check_api_base(value)

    @model_validator(mode="after")
    def _prices_together(self) -> LlmAgentConnection:
        if (self.input_per_mtok is None) != (self.output_per_mtok is None):
            raise ValueError("input_per_mtok and output_per_mtok set together (or neither)")
        return self

    @property
    def has_prices(self) -> bool:
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    def token_cost(self, prompt: float, completion: float) -> float:
        """USD for these tokens at the agent's own prices (callers check has_prices)."""
        assert self.input_per_mtok is not None and self.output_per_mtok is not None
        return (prompt * self.input_per_mtok + completion * self.output_per_mtok) / 1e6

    def public_view(self) -> dict[str, Any]:
        """Adds whether the key's variable is set, which is what a user debugging a 401 wants to know."""
        view = super().public_view()
        view["api_key_set"] = bool(self.api_key_env and os.environ.get(self.api_key_env))
        return view


class McpAgentConnection(_AgentBase):
    """A tool of another MCP server: ``command`` + ``args`` (stdio) or ``url`` (streamable HTTP)."""

    kind: Literal["mcp"]
    command: str | None = Field(default=None, min_length=1)
    args: tuple[str, ...] = ()
    # the stdio server's working directory: relative command/args paths resolve against it. `agents load` makes it
    # absolute, defaulting to the agents.toml's directory, so a host starting our server from / still finds them.
    cwd: str | None = Field(default=None, min_length=1)
    env_vars: tuple[EnvName, ...] = ()
    url: str | None = None
    # the NAME of a variable holding a bearer token the url server requires (sent as Authorization: Bearer ...):
    # QA, a token-protected server, another skillorchestra among them, could not be a tool agent
    bearer_token_env: EnvName | None = None
    tool: str = Field(min_length=1, max_length=200)
    text_argument: str = Field(default="text", min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    cost_per_call_usd: float | None = Field(default=None, ge=0, le=MAX_USD, strict=True)  # as the handbook's agent

    @field_validator("url")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @model_validator(mode="after")
    def _one_transport(self) -> McpAgentConnection:
        if (self.command is None) == (self.url is None):
            raise ValueError("exactly one of command (stdio) or url (streamable HTTP)")
        if self.url is not None and (self.args or self.env_vars or self.cwd):
            raise ValueError("args, env_vars and cwd only with command (stdio)")
        if self.url is None and self.bearer_token_env is not None:
            raise ValueError("bearer_token_env only with url (streamable HTTP); a stdio server takes env_vars")
        if self.text_argument in self.arguments:
            raise ValueError(f"arguments without {self.text_argument!r}, which receives the step text")
        return self

    def public_view(self) -> dict[str, Any]:
        """With the value of a secret-named command-line option masked: `--api-key X`, `--token=X` (QA: `agents
        show` printed a key passed in args). The command still gets it; env_vars is the better place."""
        view = super().public_view()
        view["args"] = masked_args(self.args)
        view["url"] = None if self.url is None else redacted_url(self.url)  # a query may carry a key (review)
        if self.bearer_token_env:  # what a user debugging an auth failure wants to know, as api_key_set (review)
            view["bearer_token_set"] = bool(os.environ.get(self.bearer_token_env, "").strip())
        return view


def masked_args(args: Sequence[str]) -> list[str]:
    """`args` with the secrets a command line usually carries replaced by ***: the value of a secret-named option
    (`--api-key X`, `--token=X`) or NAME=value pair (`-e OPENAI_API_KEY=X`), and within any argument a URL's
    credentials and query, a secret header's value (`Authorization: Bearer X`, `api-key: X`, JSON headers too) and a
    connection string's password."""
    shown: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not _LONG_OPTION.fullmatch(arg):  # a key may start with "-"; "--verbose" is no value
            shown.append(MASK)
            hide_next = False
            continue
        name, equals, _ = arg.partition("=")
        bare = name.lstrip("-")
        named = _OPTION_NAME.fullmatch(name) is not None  # "--api-key", "OPENAI_API_KEY"; not a URL's "...?api_key"
        secret = named and is_secret_field(bare) and not bare.lower().startswith("no-")
        shown.append(f"{name}={MASK}" if secret and equals else _masked_within(arg))
        hide_next = arg.startswith("-") and secret and not equals
    return shown


_LONG_OPTION = re.compile(r"--[A-Za-z][\w-]*")
_OPTION_NAME = re.compile(r"-{0,2}[A-Za-z_][\w.-]*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"',;]+")
_HEADER = re.compile(r"(?i)\b(authorization|proxy-authorization|cookie|x-[\w-]*key|api-key|[\w-]*-token)\s*:\s*\S.*")
_JSON_PAIR = re.compile(r'"([^"]+)"\s*:\s*"[^"]*"')
_CONNECTION_PASSWORD = re.compile(r"(?i)\b(password|pwd)=[^;\s]*")


def _masked_within(arg: str) -> str:
    """One argument with the secrets inside it masked (see masked_args)."""
    arg = _URL.sub(lambda found: str(redacted_url(found.group(0))), arg)
    arg = _HEADER.sub(lambda found: f"{found.group(1)}: {MASK}", arg)
    arg = _JSON_PAIR.sub(
        lambda found: f'"{found.group(1)}": "{MASK}"' if is_secret_field(found.group(1)) else found.group(0), arg
    )
    return _CONNECTION_PASSWORD.sub(lambda found: f"{found.group(1)}={MASK}", arg)


AgentConnection = LlmAgentConnection | McpAgentConnection


def _where(source: str, agent_id: str, field: str | None = None) -> str:
    bare = re.fullmatch(r"[A-Za-z0-9_-]+", agent_id)
    ref = f"agents.{agent_id}" if bare else f'agents."{agent_id}"'
    return f"{source}: {ref}" + (f".{field}" if field else "")


def _words(name: str) -> list[str]:
    """apiKey, "api-key", API_KEY -> ["api", "key"]."""
    return [w for w in re.split(r"[_\-\s.]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()) if w]


def is_secret_field(name: object) -> bool:
    """Whether a key of an agent's table names a secret (api_key, apiKey, "api-key", authorization, ...), not a
    variable holding one (api_key_env, env_vars). Broad, by any word: a table takes known settings only, so this
    decides how a refusal reads (the value masked), never whether it is refused."""
    if not isinstance(name, str):
        return False
    return name.lower() not in _ENV_NAME_FIELDS and any(word in _SECRET_WORDS for word in _words(name))


def is_secret_argument(name: object) -> bool:
    """Whether an MCP tool argument's name is a secret's: the whole name (key, token, api_key, authorization,
    client_secret...) or its end (openai_api_key, github_access_token). Narrower than is_secret_field, since a
    tool's own arguments may be sort_key, public_key, max_token or auth_mode (review)."""
    if not isinstance(name, str):
        return False
    snake = "_".join(_words(name))
    return snake in _SECRET_ARGUMENTS or any(snake.endswith(f"_{end}") for end in _SECRET_ENDINGS)


def _secret_argument(arguments: object) -> str | None:
    """The dotted path of the first secret-named key in a tool's fixed arguments, nested tables included
    ({auth = {token = ...}}: review), or None."""
    if not isinstance(arguments, Mapping):
        return None
    for name, value in arguments.items():
        if is_secret_argument(name):
            return str(name)
        if (inner := _secret_argument(value)) is not None:
            return f"{name}.{inner}"
    return None


def parse_agent(agent_id: str, raw: Mapping[str, Any], source: str = "<config>") -> AgentConnection:
    """Validate one agent's table; errors name the source, the agent and the field."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(_where(source, agent_id), raw, "a table of agent settings")
    # where the secret goes instead: the field this kind of agent takes (review: a url tool agent was sent to
    # api_key_env and env_vars, which it cannot use)
    url_tool = raw.get("kind") == "mcp" and "url" in raw
    if url_tool:
        instead = "put the token in an environment variable and name it with bearer_token_env"
    elif raw.get("kind") == "mcp":
        instead = "pass it to the tool server in an environment variable named in env_vars"
    else:
        instead = "put the key in an environment variable and name it with api_key_env"
    for name in raw:
        if is_secret_field(name):
            raise InvalidInput(_where(source, agent_id, name), "***", f"no secret in the file: {instead}")
    if (path := _secret_argument(raw.get("arguments"))) is not None:  # sent with every call, stored: QA
        tool_way = instead if url_tool else "pass it to the tool server in an environment variable named in env_vars"
        raise InvalidInput(_where(source, agent_id, f"arguments.{path}"), "***", f"no secret in the file: {tool_way}")
    kind = raw.get("kind", "llm")
    model_cls: type[_AgentBase]
    if kind == "llm":
        model_cls = LlmAgentConnection
    elif kind == "mcp":
        model_cls = McpAgentConnection
    else:
        raise InvalidInput(_where(source, agent_id, "kind"), kind, '"llm" (default) or "mcp"')
    for name, value in raw.items():
        if isinstance(value, Mapping) and name not in model_cls.model_fields:  # [agents.gpt-4.1] split on "."
            hint = f'settings, not a table; an id containing "." must be quoted: [agents."{agent_id}.{name}"]'
            raise InvalidInput(_where(source, agent_id, name), "{...}", hint)
    try:
        return model_cls.model_validate({**raw, "id": agent_id})
    except ValidationError as exc:
        err = exc.errors()[0]
        where, value, expected = first_problem(exc)
        field = where or None
        if err["type"] == "extra_forbidden":
            expected = "no such field (known: " + ", ".join(sorted(model_cls.model_fields)) + ")"
        elif err["type"] == "missing":
            value, expected = None, "a value (required)"
        if err["loc"] and err["loc"][0] in _ENV_NAME_FIELDS:
            value, expected = masked_env_name_error(err, expected)
        if err["loc"] and err["loc"][0] in _URL_FIELDS:
            value = redacted_url(value)
        if len(exc.errors()) > 1:
            expected += f" (and {len(exc.errors()) - 1} more problem(s))"
        raise InvalidInput(_where(source, agent_id, field), value, expected) from None


def masked_env_name_error(err: Any, expected: str) -> tuple[str, str]:
    """(value, expected) for a refused environment-variable NAME field: often the key itself was pasted there, so
    the value is never echoed, and a malformed name is explained."""
    if err["type"] in ("string_pattern_mismatch", "string_too_long", "string_too_short"):
        expected = "the NAME of an environment variable (letters, digits, _; no leading digit), not its value"
    return "***", expected


def parse_agent_configs(data: Mapping[str, Any], source: str = "<config>") -> dict[str, AgentConnection]:
    """Agents from an already-parsed TOML document (``[agents.<id>]`` tables and/or ``[[agent]]`` items)."""
    entries: list[tuple[str, Any]] = []
    tables = data.get("agents", {})
    if not isinstance(tables, Mapping):
        raise InvalidInput(f"{source}: agents", tables, "tables [agents.<id>] (or the list form [[agent]])")
    entries += list(tables.items())
    items = data.get("agent", [])
    if not isinstance(items, list):
        raise InvalidInput(
            f"{source}: agent",
            items,
            "tables [agents.<id>] (note the s: [agent.x] is not a form this file takes) or a list [[agent]] with id",
        )
    for i, item in enumerate(items):
        agent_id = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidInput(f"{source}: agent[{i}].id", agent_id, "a non-empty string id")
        entries.append((agent_id, {k: v for k, v in item.items() if k != "id"}))
    agents: dict[str, AgentConnection] = {}
    for given_id, raw in entries:
        agent_id = given_id.strip() or given_id  # a blank id is refused by parse_agent, naming it
        if agent_id in agents:
            raise InvalidInput(_where(source, given_id), given_id, "each agent id defined once")
        if isinstance(raw, Mapping) and "judge" in raw:
            raise InvalidInput(_where(source, agent_id, "judge"), "{...}", "a top-level [judge] section instead")
        agents[agent_id] = parse_agent(agent_id, raw, source)
    if "judge" in data:
        agents = _with_judge(agents, data["judge"], source)
    return agents


def _with_judge(agents: dict[str, AgentConnection], raw: Any, source: str) -> dict[str, AgentConnection]:
    """Attach the [judge] settings to the llm agent they name (stored with its connection)."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{source}: judge", raw, 'a [judge] table naming an llm agent: agent = "<id>"')
    for name in raw:
        if is_secret_field(name):  # the judge calls with its agent's key (QA: this one was printed whole)
            raise InvalidInput(
                f"{source}: judge.{name}", "***", "no secret in the file: the judge uses its agent's key"
            )
    try:
        settings = JudgeSettings.model_validate(raw)
    except ValidationError as exc:
        field, value, expected = first_problem(exc)
        raise InvalidInput(f"{source}: judge.{field}", value, expected) from None
    target = agents.get(settings.agent)
    if not isinstance(target, LlmAgentConnection):
        llm_ids = sorted(a for a, c in agents.items() if isinstance(c, LlmAgentConnection))
        raise InvalidInput(f"{source}: judge.agent", settings.agent, f"one of the file's llm agents {llm_ids}")
    return {**agents, settings.agent: target.model_copy(update={"judge": settings})}


_BARE_HEADER = re.compile(r"\[{1,2}[A-Za-z0-9_.\- ]*\]{1,2}")  # a table header of bare keys only


def _quoting_hint(text: str, exc: tomllib.TOMLDecodeError) -> str:
    """The hint to quote an id, when the line TOML refused is a table header holding what a bare key cannot (a "/",
    as model ids do); other errors get none (QA: an unterminated array was told to quote ids)."""
    where = re.search(r"at line (\d+)", str(exc))
    lines = text.splitlines()
    if where is None or not 1 <= int(where.group(1)) <= len(lines):
        return ""
    line = lines[int(where.group(1)) - 1].split("#")[0].strip()
    if not line.startswith("[") or '"' in line or "'" in line or _BARE_HEADER.fullmatch(line):
        return ""
    return '; quote ids containing "/" or ".": [agents."meta/llama"]'


def load_agent_configs(
    path: str | Path, *, other_sections: Collection[str] = (), argument: str = "file"
) -> dict[str, AgentConnection]:
    """Read and validate a TOML file; unknown top-level keys are errors unless named in ``other_sections``.
    `argument`: the command-line argument that named the file, which an unreadable file's error names."""
    source = str(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM (Windows editors) is no TOML error (QA)
            text = f.read()
        data = tomllib.loads(text)
    except OSError as exc:
        raise InvalidInput(argument, source, f"a readable TOML file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise not_utf8(source) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(source, "...", f"valid TOML ({exc}){_quoting_hint(text, exc)}") from None
    unknown = sorted(set(data) - {"agents", "agent", "judge"} - set(other_sections))
    if unknown:
        expected = "only [agents.<id>] tables, [[agent]] items and an optional [judge] section"
        raise InvalidInput(f"{source}: {unknown[0]}", unknown[0], expected)
    agents = parse_agent_configs(data, source)
    if not agents:
        raise InvalidInput(source, "no agents", "at least one [agents.<id>] table")
    return anchored(agents, Path(path).resolve().parent)


def anchored(agents: dict[str, AgentConnection], base: Path) -> dict[str, AgentConnection]:
    """Stdio MCP agents with an absolute working directory: `cwd` taken relative to `base` (the file's directory),
    which is also the default. The server runs wherever its host starts it, not where `agents load` ran."""
    return {
        agent_id: (
            conn.model_copy(update={"cwd": str(base / conn.cwd if conn.cwd else base)})
            if isinstance(conn, McpAgentConnection) and conn.command is not None
            else conn
        )
        for agent_id, conn in agents.items()
    }
