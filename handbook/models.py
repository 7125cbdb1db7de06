"""The Skill Handbook's vocabulary: modes, skills, agents, competence and cost, and the transferable document.

These models are the contract between storage, the router, the learner and the MCP tools; every id is a
non-empty string of at most 200 characters (it may contain '/', as model names do).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Final, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

ID_MAX = 200
TEXT_MAX = 32_000
DESCRIPTION_MAX = 4_000
LIST_MAX = 50
ITEM_MAX = 1_000  # an indicator, example or insight
# upper bounds of amounts clients report: far above any real call, and finite, so one typo cannot swamp c_ref
MAX_USD = 1e6  # a call's cost, a budget, a price per million tokens
MAX_TOKENS = 2**53  # also within SQLite's INTEGER
MAX_SECONDS = 1e6
PLAUSIBLE_TOKENS = 10_000_000  # per call and figure: beyond any model's context or output, so a figure past it is an
# error (a backend's usage report, a trace line): not believed
# an outcome scoring at least this is a success (traces, metrics, the judge); an unreported token count is estimated
# at CHARS_PER_TOKEN characters a token, an answer's at DEFAULT_COMPLETION_TOKENS (traces and costing). Here, not in
# traces.py, so that costing and metrics do not load the trace models at start-up.
SUCCESS_THRESHOLD = 0.5
DEFAULT_COMPLETION_TOKENS = 256
CHARS_PER_TOKEN = 4.0
MAX_EVIDENCE = 1e12  # alpha or beta of an entering competence row: past any log, far below overflow in its variance
MAX_SKILL_DEPTH = 32  # levels of a skill tree a selection may name (a deeper one routes at full depth anyway)
DEFAULT_SELECTION = "default"  # the selection every learned version stores for orchestrators without their own
MAX_LAMBDA = 1000.0  # cost weighs 1000 quality units per c_ref: beyond this, every policy is 'cheapest'
MAX_SEED = 2**32 - 1  # what every seeded generator here (random, numpy) takes as one word
MIN_TRY_S = 0.5  # delegate's least time budget: below it, no try of an agent can finish
MAX_DELEGATE_S = 600.0  # delegate's largest time budget (fallbacks and the judge included)
# a delegate's claim older than this cannot be in flight (its budget, litellm's one-off import and slack): its server
# stopped, and record_outcome takes reports of the decision again
CLAIM_IN_FLIGHT_S = MAX_DELEGATE_S + 300.0
MAX_LENGTH_SLOPE = 1.0  # a success rate cannot move by more than 1 per unit of ln(characters)
MAX_LN_CHARS = 20.0  # ln of far more characters than any step holds
MAX_CI_INFLATION = 10.0  # a learned widening of ci90 beyond this says the handbook knows nothing: 10x is plenty

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, strip_whitespace=True)]
UNADDRESSABLE_IDS = (".", "..")  # a resource URI (handbook://agents/{id}) cannot name them: dot path segments


TEXT_CONTROLS = "\n\t"  # the control characters a description, indicator, example or insight may hold


BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # embeddings, overrides, isolates


def encodable(value: str) -> bool:
    """Whether `value` is text of valid Unicode: a command-line argument's bytes that are not UTF-8 reach Python as
    lone surrogates, which no JSON document or pydantic model takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def control_characters(value: str, allowed: str = "") -> list[str]:
    """The control characters (Unicode category Cc: NUL, ESC, BEL, CR, DEL, C1...) of `value` not in `allowed`."""
    return [c for c in value if unicodedata.category(c) == "Cc" and c not in allowed]


# bidi controls and marks, zero-width space, word joiner, byte-order mark, soft hyphen: in an id they make two ids
# that print alike, or one that prints reversed ('Trojan source'). Not ZWNJ/ZWJ, which Persian words and emoji need.
INVISIBLE_IN_IDS = BIDI_CONTROLS + "\u200e\u200f\u061c\u200b\u2060\ufeff\u00ad"


def invisible_characters(value: str) -> list[str]:
    """The characters of `value` an id must not hold although they print as nothing (INVISIBLE_IN_IDS)."""
    return [c for c in value if c in INVISIBLE_IN_IDS]


def visible(text: str) -> bool:
    """Whether `text` holds a character that prints: spaces, control and zero-width format characters alone (a
    step of NULs, or of zero-width spaces) describe nothing."""
    return any(not c.isspace() and unicodedata.category(c) not in _UNPRINTED for c in text)


_UNPRINTED = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def addressable(value: str) -> str:
    """Refuse, where a new id enters (tools, agents.toml, import), an id that could be written but never read as a
    resource ('.' or '..', also as a segment between slashes: a resource URI handbook://skills/{id} cannot name it)
    or shown safely (a control character: `handbook show` prints ids to a terminal, which would act on an escape;
    an invisible format character: two ids would print alike).
    Not part of Identifier, so a file that already holds one still opens."""
    if any(segment in UNADDRESSABLE_IDS for segment in value.split("/")):
        raise ValueError(
            "an id other than '.' or '..', without either as a segment between slashes (a resource URI cannot name"
            " it, so it could never be read)"
        )
    if found := control_characters(value):
        raise ValueError(f"an id without control characters (it holds {found[0]!r})")
    if found := invisible_characters(value):
        raise ValueError(f"an id without invisible format characters (it holds {found[0]!r})")
    if not unicodedata.is_normalized("NFC", value):
        raise ValueError(
            "an id in Unicode NFC form (it holds a decomposed character, such as e followed by a combining accent, "
            f"so it prints like the id {unicodedata.normalize('NFC', value)!r} but is another one)"
        )
    return value


def plain_text(value: str) -> str:
    """Refuse, where a text enters the handbook, a control character other than newline and tab, or a bidi control:
    a description is printed to terminals and logs, where ESC or CR would act or overwrite and RLO reorder. Not part
    of ShortText/ListItem, so a file that already holds one still opens (see document_checks.check_entering)."""
    if found := control_characters(value, TEXT_CONTROLS):
        raise ValueError(f"text without control characters other than newline and tab (it holds {found[0]!r})")
    if found := [c for c in value if c in BIDI_CONTROLS]:
        raise ValueError(
            f"text without bidirectional embedding, override or isolate characters (it holds {found[0]!r}: it"
            " makes a line print in another order than it reads)"
        )
    return value


NewId = Annotated[Identifier, AfterValidator(addressable)]
ShortText = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)]
ListItem = Annotated[str, StringConstraints(min_length=1, max_length=ITEM_MAX)]

InfrastructureError = Literal["timeout", "rate_limit", "connection", "auth", "server_error"]
INFRASTRUCTURE_ERRORS: tuple[str, ...] = get_args(InfrastructureError)
ErrorClass = Literal["task", InfrastructureError]  # the same JSON schema enum as the six names written out
DEFAULT_MODE = "general"
FORMAT_NAME: Final = "skillorchestra-handbook"
SCHEMA_VERSION = 1  # the one document layout this version reads and writes


class _Model(BaseModel):
    # an infinite price or count would poison every later route (inf / inf is NaN), so no model takes one
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Mode(_Model):
    """A coarse stage of work (search, code, answer) with short routing insights for the orchestrator."""

    id: Identifier
    description: ShortText = ""
    insights: list[ListItem] = Field(default_factory=list, max_length=LIST_MAX)


class Skill(_Model):
    """A fine-grained, measurable capability; the dotted id's prefix is usually its parent (category)."""

    id: Identifier
    mode: Identifier = DEFAULT_MODE
    parent_id: Identifier | None = None
    description: ShortText = ""
    indicators: list[ListItem] = Field(default_factory=list, max_length=LIST_MAX)
    examples: list[ListItem] = Field(default_factory=list, max_length=LIST_MAX)


class Agent(_Model):
    """A backend agent as the router sees it; connection settings live apart (agents.toml)."""

    id: Identifier
    description: ShortText = ""
    modes: list[Identifier] = Field(default_factory=list, max_length=LIST_MAX)
    input_per_mtok: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    output_per_mtok: float | None = Field(default=None, ge=0.0, le=MAX_USD)
    enabled: bool = True
    # a price per call on top of any token prices: an MCP tool agent's (agents.toml cost_per_call_usd), so routing
    # and budgets count what delegate bills for it
    cost_per_call_usd: float | None = Field(default=None, ge=0.0, le=MAX_USD)


class Competence(_Model):
    """Beta(alpha, beta) posterior of an agent's success rate on a skill; Beta(1, 1) means no evidence."""

    model_config = ConfigDict(defer_build=True)  # not in any tool schema: built on first use

    agent_id: Identifier
    skill_id: Identifier
    alpha: float = Field(default=1.0, gt=0.0)  # at most MAX_EVIDENCE where a document enters (document_checks)
    beta: float = Field(default=1.0, gt=0.0)


class CostStats(_Model):
    """Weighted running statistics of an agent's cost per call on a skill (weights = skill demands)."""

    model_config = ConfigDict(defer_build=True)  # not in any tool schema: built on first use

    agent_id: Identifier
    skill_id: Identifier
    n: float = Field(default=0.0, ge=0.0)
    mean_cost_usd: float = Field(default=0.0, ge=0.0)
    m2_cost: float = Field(default=0.0, ge=0.0)
    mean_prompt_tokens: float = Field(default=0.0, ge=0.0)
    mean_completion_tokens: float = Field(default=0.0, ge=0.0)
    mean_latency_s: float = Field(default=0.0, ge=0.0)
    # the router's own estimate (characters / 4 of the text and any context sent) of the steps behind mean_cost_usd,
    # so a new step's length is compared like with like (handbook/costing.py); 0 = unknown
    mean_step_tokens: float = Field(default=0.0, ge=0.0)
    n_step_tokens: float = Field(default=0.0, ge=0.0)  # the weighted calls behind mean_step_tokens
    # the weighted calls that reported each figure: a call that did not leaves its mean alone (QA: a call without
    # a latency, then one of 10 s, read 5 s). A document written before these counts existed gets n.
    n_prompt_tokens: float = Field(default=None, ge=0.0, validate_default=False)  # type: ignore[assignment]
    n_completion_tokens: float = Field(default=None, ge=0.0, validate_default=False)  # type: ignore[assignment]
    n_latency_s: float = Field(default=None, ge=0.0, validate_default=False)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _counts_of_older_documents(self) -> CostStats:
        for name in MEASURED_COUNTS:
            if getattr(self, name) is None:
                setattr(self, name, self.n)
        return self


MEASURED_COUNTS = ("n_prompt_tokens", "n_completion_tokens", "n_latency_s")


class SkillDemand(_Model):
    """How much a step needs one skill; the weights of a step are normalised to sum to 1."""

    skill_id: Identifier
    weight: float = Field(ge=0.0)


class LengthEffect(_Model):
    """How an agent's chance of success moves with the length of the step, where the learner found that it does.

    quality(agent, step) = skill-weighted competence + slopes[agent] * (x - center), x = ln(characters of the
    step without surrounding whitespace) kept within [low, high], the range the slopes were fitted on (a line is
    not extrapolated). A long word problem defeats a small model far more often than a large one, and a skill
    that holds short and long problems alike cannot say so. Learned offline (ridge on the handbook's own
    residuals) and kept only when cross-validation shows it routes better; an agent absent from `slopes` does not
    move."""

    model_config = ConfigDict(defer_build=True)  # not in any tool schema: built on first use

    center: float = Field(ge=0.0, le=MAX_LN_CHARS, description="ln(characters) of the typical training step")
    low: float = Field(ge=0.0, le=MAX_LN_CHARS, description="the shortest training step's ln(characters)")
    high: float = Field(ge=0.0, le=MAX_LN_CHARS, description="the longest training step's ln(characters)")
    slopes: dict[Identifier, float] = Field(
        default_factory=dict, description="agent_id -> change of success rate per unit of ln(characters)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> LengthEffect:
        if not self.low <= self.center <= self.high:
            raise PydanticCustomError(
                "length_range",
                "low <= center <= high (got low {low}, center {center}, high {high})",
                {"low": self.low, "center": self.center, "high": self.high},
            )
        return self

    @field_validator("slopes", mode="before")
    @classmethod
    def _distinct(cls, value: Any) -> Any:
        """Ids are stripped: " a" beside "a" would silently overwrite one slope with the other."""
        if isinstance(value, dict):
            seen: dict[str, str] = {}
            for key in value:
                stripped = key.strip() if isinstance(key, str) else key
                if stripped in seen:
                    raise PydanticCustomError(
                        "duplicate_agent",
                        "each agent once ({first!r} and {second!r} name the same agent)",
                        {"first": seen[stripped], "second": key},
                    )
                seen[stripped] = key
        return value

    @field_validator("slopes")
    @classmethod
    def _bounded(cls, value: dict[str, float]) -> dict[str, float]:
        for agent_id, slope in value.items():
            if abs(slope) > MAX_LENGTH_SLOPE:
                raise PydanticCustomError(
                    "slope_range",
                    "slopes[{agent}] = {slope} (expected a number in [-{limit}, {limit}])",
                    {"agent": agent_id, "slope": slope, "limit": MAX_LENGTH_SLOPE},
                )
        return value


class CiInflation(_Model):
    """How much wider route_step's and consult_handbook's ci90 must be than the posteriors say, learned on the
    validation split (handbook/learning/ci_inflation.py; applied by handbook/ci_scale.py). A young handbook's
    skills were shaped by the same outcomes that are then counted in them, so its posteriors read surer than
    they are; `factor` is the spread of the validation misses in units of the stated sd (>= 1: never narrower).
    It fades as outcomes recorded after learning outnumber `evidence` (what each agent had at learning time).
    Quality, and so every routing choice, never reads it."""

    model_config = ConfigDict(defer_build=True)  # not in any tool schema: built on first use

    factor: float = Field(ge=1.0, le=MAX_CI_INFLATION, description="ci90 half-width multiplier at learning time")
    evidence: dict[Identifier, float] = Field(
        default_factory=dict,
        description="agent_id -> observations behind the agent when learned (the factor fades beyond them)",
    )

    @field_validator("evidence")
    @classmethod
    def _counts(cls, value: dict[str, float]) -> dict[str, float]:
        for agent_id, n in value.items():
            if not 0.0 <= n <= MAX_EVIDENCE:
                raise PydanticCustomError(
                    "evidence_range",
                    "evidence[{agent}] = {n} (expected a number in [0, {limit}])",
                    {"agent": agent_id, "n": n, "limit": MAX_EVIDENCE},
                )
        return value


PerAgent = TypeVar("PerAgent", LengthEffect, CiInflation)


def without_agents(part: PerAgent | None, field: str, gone: set[str]) -> PerAgent | None:
    """A learned part keyed by agent (LengthEffect.slopes, CiInflation.evidence) without the entries of `gone`
    (deleted agents: what was learned of them goes with their evidence); None when no entry is left."""
    if part is None:
        return None
    kept = {agent: value for agent, value in getattr(part, field).items() if agent not in gone}
    return part.model_copy(update={field: kept}) if kept else None


class HandbookDocument(_Model):
    """The whole handbook as one JSON object: the transferable artifact of export and import."""

    model_config = ConfigDict(defer_build=True)  # not in any tool schema: built on first use

    format: Literal["skillorchestra-handbook"] = FORMAT_NAME
    schema_version: int = SCHEMA_VERSION
    version: int = 0
    description: ShortText = ""
    modes: list[Mode] = Field(default_factory=list)
    skills: list[Skill] = Field(default_factory=list)
    agents: list[Agent] = Field(default_factory=list)
    competence: list[Competence] = Field(default_factory=list)
    cost: list[CostStats] = Field(default_factory=list)
    selections: dict[Identifier, Annotated[int, Field(ge=0, le=MAX_SKILL_DEPTH)]] = Field(
        default_factory=dict, description="orchestrator name -> skill depth chosen for it (0: mode level)"
    )
    labeller: dict[str, Any] | None = Field(
        default=None,
        description="the learned skill identifier, so deployment infers skill weights exactly as learning did",
    )
    length_effect: LengthEffect | None = Field(
        default=None,
        description="how success moves with the step's length per agent (learned; absent = not at all)",
        exclude_if=lambda value: value is None,  # a handbook without one exports as before and older readers take it
    )
    ci_inflation: CiInflation | None = Field(
        default=None,
        description="how much wider ci90 is than the posteriors say (learned on validation; absent = not wider)",
        exclude_if=lambda value: value is None,  # as length_effect: without one, exported as before
    )

    @field_validator("schema_version")
    @classmethod
    def _readable(cls, value: int) -> int:
        """A document of another layout would be misread field by field: refuse it as a whole."""
        if value != SCHEMA_VERSION:
            raise PydanticCustomError(
                "schema_version",
                "{supported} (this version of skillorchestra reads schema_version {supported} only; the document"
                " has {got})",
                {"supported": SCHEMA_VERSION, "got": value},
            )
        return value
