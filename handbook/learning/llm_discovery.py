"""Skill discovery by an LLM (the learner), as a drop-in for offline discovery (`learn(..., discoverer=...)`).

Our prompts show the model batches of training tasks, each with every agent's result, plus contrasting cases
(one agent solved the task, another did not), and ask for a taxonomy (categories -> skills with descriptions,
indicators and examples) as JSON, together with the skill of every task shown. Later batches see the skills
found so far, assign their tasks and may add skills. Replies are validated with pydantic; a bad reply is sent
back with the error, a bounded number of times, and a hard cap bounds all calls (retries included).

Identification stays the pipeline's nearest-prototype labeller: the prototypes of a skill are micro-clusters
of the tasks the LLM assigned to it, so skill weights are computed the same way at learning and deployment.
Some LLM-labelled tasks are held out of the prototypes to measure how often labeller and LLM agree.

No network here: the model is reached through an injected `complete(messages) -> Completion`
(server/llm_learner.py makes one with litellm).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skillorchestra.handbook.errors import HandbookError, field_path
from skillorchestra.handbook.learning.discovery import Corpus, DiscoveryParams
from skillorchestra.handbook.learning.features import kmeans
from skillorchestra.handbook.learning.labeller import SkillLabeller
from skillorchestra.handbook.learning.taxonomy import Category, Leaf, Taxonomy, slug, unique_id, with_leaves
from skillorchestra.handbook.models import DESCRIPTION_MAX, ID_MAX, HandbookDocument, Skill
from skillorchestra.handbook.reply_text import unfenced
from skillorchestra.handbook.traces import TraceTask

LIST_KEEP = 8  # indicators / examples kept per skill
ITEM_MAX = 1_000


class LearnerFailed(HandbookError):
    """The learner model gave no usable taxonomy (or cannot be reached at all)."""


@dataclass(frozen=True)
class Completion:
    """One call's result as the discoverer needs it; `text` is None when the call failed."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # None = unknown price
    error_class: str | None = None  # the contract's classes: timeout, rate_limit, connection, auth, ...
    message: str | None = None


Complete = Callable[[list[dict[str, str]]], Completion]


@dataclass(frozen=True)
class LlmDiscoveryParams:
    batch_size: int = 40  # tasks shown per call
    max_batches: int = 12  # so LLMRouter's 4.5k training tasks cost <= 12 calls + retries
    max_calls: int = 40  # hard cap on requests, retries included
    max_retries: int = 2  # further attempts per batch after a bad reply or a failed call
    min_categories: int = 2
    max_categories: int = 8
    max_skills: int = 4  # per category
    pairs_per_batch: int = 6  # contrasting cases shown per call
    query_chars: int = 300
    output_chars: int = 160
    micro_size: int = 15  # LLM-labelled tasks per prototype, roughly
    heldout_fraction: float = 0.2  # of each skill's labelled tasks, kept out of the prototypes (agreement)
    # a reply that leaves a task of its batch unassigned is sent back; when the retries run out, the best reply
    # is still used if it assigns at least this share of the batch (else the batch fails)
    min_coverage: float = 0.8


# ------------------------------------------------------------------------------------------- reply models


def _items(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    out = [str(v).strip()[:ITEM_MAX] for v in value if str(v).strip()]
    return out[:LIST_KEEP]


class SkillDraft(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=ID_MAX)
    description: str = ""
    indicators: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)

    @field_validator("indicators", "examples", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> list[str]:
        return _items(value)

    @field_validator("description", mode="before")
    @classmethod
    def _short(cls, value: Any) -> str:
        return str(value or "")[:DESCRIPTION_MAX]


class CategoryDraft(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=ID_MAX)
    description: str = ""
    skills: list[SkillDraft] = Field(min_length=1)

    @field_validator("description", mode="before")
    @classmethod
    def _short(cls, value: Any) -> str:
        return str(value or "")[:DESCRIPTION_MAX]


class TaxonomyReply(BaseModel):
    """What every call must answer: new categories/skills (all of them in the first call) and assignments."""

    model_config = ConfigDict(extra="ignore")

    categories: list[CategoryDraft] = Field(default_factory=list)
    assignments: dict[str, str]

    @field_validator("assignments", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        """Also accept a list of {"task": handle, "skill": id} objects, a shape models often choose."""
        if isinstance(value, list):
            out = {}
            for item in value:
                if isinstance(item, Mapping) and "task" in item and "skill" in item:
                    out[str(item["task"])] = str(item["skill"])
            return out
        return value


class ReplyError(ValueError):
    """A reply that cannot be used as is; the message goes back to the model."""


def parse_reply(text: str) -> TaxonomyReply:
    """The JSON object in a reply (code fences and chatter around it tolerated), validated."""
    body = unfenced(text)  # string operations: the regex this replaced was quadratic on long whitespace (review)
    start, end = body.find("{"), body.rfind("}")
    if start < 0:
        raise ReplyError("no JSON object found; reply with one JSON object only")
    if end <= start:
        raise ReplyError("the JSON object is incomplete (no closing brace); keep the reply shorter if needed")
    try:
        raw = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ReplyError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        reply = TaxonomyReply.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{field_path(e['loc']) or 'object'}: {e['msg']}" for e in exc.errors(include_url=False)[:5]]
        raise ReplyError("the JSON does not have the required shape: " + "; ".join(problems)) from None
    echoed = template_echoes(reply)
    if echoed:  # a model that copies the example shape (small local models, or a server echoing the prompt)
        raise ReplyError(
            f"it repeats the placeholders of the example shape ({', '.join(echoed[:4])}); write the real "
            "categories and skills of the tasks shown, with your own ids, descriptions, indicators and examples"
        )
    return reply


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", str(text).lower()).split())


def template_echoes(reply: TaxonomyReply) -> list[str]:
    """The fields of a reply that repeat REPLY_SHAPE's placeholders instead of describing tasks."""
    ids, texts = _TEMPLATE
    fields: list[tuple[str, str, bool]] = []  # (kind, value, is an id)
    for cat in reply.categories:
        fields += [("id", cat.id, True), ("description", cat.description, False)]
        for skill in cat.skills:
            fields += [("id", skill.id, True), ("description", skill.description, False)]
            fields += [("indicator", item, False) for item in skill.indicators]
            fields += [("example", item, False) for item in skill.examples]
    return [
        f"{kind} {_flat(value, 60)!r}"
        for kind, value, is_id in fields
        if (any(part in ids for part in _key(value).split(".")) if is_id else any(t in _words(value) for t in texts))
    ]


# --------------------------------------------------------------------------------------------- the registry


@dataclass
class _SkillEntry:
    id: str
    category: str
    draft: SkillDraft


@dataclass
class _CategoryEntry:
    id: str
    mode: str
    description: str
    skills: list[str] = field(default_factory=list)


@dataclass
class _Staged:
    """A reply checked against the registry, not yet applied."""

    categories: list[tuple[str, str, str]]  # (raw key, final id, description) of new categories
    skills: list[tuple[str, str, SkillDraft]]  # (category final id, final skill id, draft)
    aliases: dict[str, str]
    assignments: dict[str, str]  # handle -> final skill id
    problems: list[str]


def _key(text: str) -> str:
    return ".".join(slug(part) for part in str(text).strip().lower().split(".") if part.strip())


class _Registry:
    """Skills found so far in one learning run (ids unique across modes; aliases per mode)."""

    def __init__(self) -> None:
        self.categories: dict[str, _CategoryEntry] = {}
        self.skills: dict[str, _SkillEntry] = {}
        self.taken: set[str] = set()
        self.aliases: dict[str, dict[str, str]] = {}  # mode -> normalised raw id -> final skill id
        self.category_keys: dict[str, dict[str, str]] = {}  # mode -> normalised raw category id -> final id

    def in_mode(self, mode: str) -> list[_CategoryEntry]:
        return [c for c in self.categories.values() if c.mode == mode]

    def stage(self, reply: TaxonomyReply, mode: str, handles: Sequence[str]) -> _Staged:
        cat_keys = dict(self.category_keys.get(mode, {}))
        aliases = dict(self.aliases.get(mode, {}))
        taken = set(self.taken)
        new_cats: list[tuple[str, str, str]] = []
        new_skills: list[tuple[str, str, SkillDraft]] = []
        for cat in reply.categories:
            ckey = _key(cat.id).replace(".", "_") or "category"
            cat_id = cat_keys.get(ckey)
            if cat_id is None:
                cat_id = unique_id(slug(ckey), taken)
                cat_keys[ckey] = cat_id
                new_cats.append((ckey, cat_id, cat.description))
            for draft in cat.skills:
                skey = _key(draft.id)
                name = skey.split(".")[-1] or "skill"
                if skey in aliases or f"{ckey}.{name}" in aliases:
                    continue  # already known: the first definition stays
                skill_id = unique_id(f"{cat_id}.{name}", taken)
                for alias in {skey, f"{ckey}.{name}", skill_id}:
                    aliases.setdefault(alias, skill_id)
                aliases.setdefault(name, skill_id)
                new_skills.append((cat_id, skill_id, draft))
        problems: list[str] = []
        if not self.in_mode(mode) and not new_skills:
            problems.append("no categories with skills")
        known_handles = set(handles)
        assigned: dict[str, str] = {}
        unknown: list[str] = []
        for handle, raw in reply.assignments.items():
            h = handle.strip().strip("[]")
            if h not in known_handles:
                continue
            named = aliases.get(_key(raw)) or aliases.get(_key(raw).split(".")[-1])
            if named is None:
                unknown.append(f"{h} -> {raw!r}")
            else:
                assigned[h] = named
        if unknown:
            problems.append(
                f"assignments name skills that are not defined ({', '.join(unknown[:5])}); "
                "use the ids of skills listed under categories"
            )
        missing = [h for h in handles if h not in assigned]
        if missing:  # the prompt's rule; the best reply is still used after the retries if it covers min_coverage
            problems.append(
                f"{len(missing)} of the {len(handles)} tasks without a skill ({', '.join(missing[:12])}"
                f"{', ...' if len(missing) > 12 else ''}); assign every task handle to exactly one skill id"
            )
        return _Staged(new_cats, new_skills, aliases, assigned, problems)

    def apply(self, staged: _Staged, mode: str) -> None:
        keys = self.category_keys.setdefault(mode, {})
        for ckey, cat_id, description in staged.categories:
            keys[ckey] = cat_id
            self.categories[cat_id] = _CategoryEntry(cat_id, mode, description[:DESCRIPTION_MAX])
            self.taken.add(cat_id)
        for cat_id, skill_id, draft in staged.skills:
            self.skills[skill_id] = _SkillEntry(skill_id, cat_id, draft)
            self.categories[cat_id].skills.append(skill_id)
            self.taken.add(skill_id)
        self.aliases.setdefault(mode, {}).update(staged.aliases)


# ------------------------------------------------------------------------------------------------ prompts

SYSTEM_PROMPT = (
    "You design skill taxonomies for a router that sends each task to one agent of a pool. A skill is a "
    "specific, checkable demand that a task makes (for example 'multi-step arithmetic with units', not "
    "'reasoning'), and it is worth naming only when it helps predict which agents succeed on a task. "
    "Answer with a single JSON object and no other text."
)

REPLY_SHAPE = (
    '{"categories": [{"id": "category_id", "description": "what the tasks of this category have in common", '
    '"skills": [{"id": "category_id.skill_name", "description": "what a task with this skill demands, and '
    'which agents cope with it", "indicators": ["a word, format or feature visible in the task text"], '
    '"examples": ["a short quote of a task above"]}]}], "assignments": {"t1": "category_id.skill_name"}}'
)


def _template_parts() -> tuple[frozenset[str], tuple[str, ...]]:
    """REPLY_SHAPE's placeholder ids (each part of them) and texts, normalised, to recognise a copied example."""
    shape = json.loads(REPLY_SHAPE)
    cat = shape["categories"][0]
    skill = cat["skills"][0]
    ids = frozenset(part for raw in (cat["id"], skill["id"]) for part in _key(raw).split("."))
    texts = tuple(
        _words(t) for t in (cat["description"], skill["description"], *skill["indicators"], *skill["examples"])
    )
    return ids, texts


_TEMPLATE = _template_parts()


def _code(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"X{i}"


def _mark(score: float) -> str:
    if score >= 1.0:
        return "+"
    if score <= 0.0:
        return "-"
    return f"{score:.2f}"


def _flat(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class _Batch:
    mode: str
    rows: list[int]  # corpus rows
    handles: list[str]


class _Prompter:
    """Builds the user message of a batch: the pool, the tasks with outcomes, contrasting cases, instructions."""

    def __init__(
        self,
        corpus: Corpus,
        train: Sequence[TraceTask],
        params: LlmDiscoveryParams,
        descriptions: Mapping[str, str],
    ) -> None:
        self.corpus, self.train, self.params = corpus, train, params
        self.agents = corpus.outcomes.agent_ids
        self.descriptions = descriptions
        self.pair_uses: dict[tuple[int, int], int] = {}

    def _pool(self, rows: list[int]) -> list[str]:
        scores = self.corpus.outcomes.scores[rows]
        lines = [f"Agents ({len(self.agents)}; the share is how many of the tasks below each one solved):"]
        for j, agent in enumerate(self.agents):
            col = scores[:, j]
            judged = col[~np.isnan(col)]
            share = f"{np.mean(judged >= 0.5):.0%}" if judged.size else "not run"
            desc = _flat(self.descriptions.get(agent, ""), 120)
            lines.append(f"  {_code(j)} = {agent}{f' ({desc})' if desc else ''}: {share}")
        return lines

    def _tasks(self, batch: _Batch) -> list[str]:
        lines = [
            f'Tasks of mode "{batch.mode}". Under each task, every agent\'s result: + solved, - failed, '
            "a number = partial score, nothing = not run."
        ]
        scores = self.corpus.outcomes.scores
        for row, handle in zip(batch.rows, batch.handles, strict=True):
            marks = [f"{_code(j)}{_mark(float(s))}" for j, s in enumerate(scores[row]) if not math.isnan(s)]
            lines.append(f"[{handle}] {_flat(self.corpus.queries[row], self.params.query_chars)}")
            lines.append(f"      {' '.join(marks)}")
        return lines

    def _pairs(self, batch: _Batch) -> list[str]:
        scores = self.corpus.outcomes.scores
        found: list[tuple[str, int, int, int]] = []
        split = 0
        for row, handle in zip(batch.rows, batch.handles, strict=True):
            s = scores[row]
            wins = [j for j in range(len(s)) if not math.isnan(s[j]) and s[j] >= 0.5]
            losses = [j for j in range(len(s)) if not math.isnan(s[j]) and s[j] < 0.5]
            if not wins or not losses:
                continue
            split += 1
            w, lo = min(((a, b) for a in wins for b in losses), key=lambda p: (self.pair_uses.get(p, 0), p))
            found.append((handle, row, w, lo))
        found.sort(key=lambda f: self.pair_uses.get((f[2], f[3]), 0))
        chosen = found[: self.params.pairs_per_batch]
        if not chosen:
            return []
        lines = [f"Contrasting cases ({len(chosen)} of the {split} tasks above on which the agents split):"]
        for handle, row, w, lo in chosen:
            self.pair_uses[(w, lo)] = self.pair_uses.get((w, lo), 0) + 1
            lines.append(
                f"  [{handle}] {_code(w)} solved it{self._said(row, w)}; {_code(lo)} failed{self._said(row, lo)}"
            )
        return lines

    def _said(self, row: int, j: int) -> str:
        outcome = self.train[row].outcomes.get(self.agents[j])
        text = outcome.output if outcome is not None else None
        return f', answering "{_flat(text, self.params.output_chars)}"' if text else ""

    def first(self, batch: _Batch) -> str:
        p = self.params
        rules = [
            "Build the taxonomy:",
            f"- {p.min_categories} to {p.max_categories} categories, each with 1 to {p.max_skills} skills; every "
            "task above must fit one skill.",
            "- Put tasks in different skills when the agents' results differ between them; keep together tasks "
            "on which the agents behave alike, even when their topics differ.",
            "- The router will see only a new task's text: make each skill recognisable from the text, with "
            "indicators (words, formats or features visible in a task) and 1 to 3 short examples quoted from the "
            "tasks above.",
            '- ids are lowercase words joined by "_"; a skill id is "<category id>.<skill name>".',
            "- Assign every task handle above to exactly one skill id.",
            f"Reply with JSON of this shape:\n{REPLY_SHAPE}",
        ]
        return "\n".join(self._pool(batch.rows) + [""] + self._tasks(batch) + [""] + self._pairs(batch) + [""] + rules)

    def next(self, batch: _Batch, registry: _Registry) -> str:
        known = [f'Skills found so far for mode "{batch.mode}":']
        for cat in registry.in_mode(batch.mode):
            known.append(f"  {cat.id}: {_flat(cat.description, 200)}")
            for skill_id in cat.skills:
                known.append(f"    - {skill_id}: {_flat(registry.skills[skill_id].draft.description, 200)}")
        rules = [
            "Assign every task handle above to exactly one of these skill ids. Only when a task fits none of them, "
            'add a skill (to an existing category or a new one) under "categories", listing only the new '
            "skills there ([] when there are none), with description, indicators and examples as before, and "
            "assign the task to it.",
            f"Reply with JSON of this shape:\n{REPLY_SHAPE}",
        ]
        body = self._pool(batch.rows) + [""] + self._tasks(batch) + [""] + self._pairs(batch) + [""]
        return "\n".join(known + [""] + body + rules)


def feedback(problem: str) -> str:
    return f"That reply could not be used: {problem}. Send the whole corrected JSON object again, and nothing else."


def plan_batches(modes: Sequence[str], scores: np.ndarray, seed: int, params: LlmDiscoveryParams) -> list[_Batch]:
    """Seeded samples per mode (tasks on which agents split weigh double), cut into at most ~max_batches batches.

    Handles (t1, t2, ...) are unique over the whole run so a reply can never confuse two batches' tasks.
    """
    rng = np.random.default_rng(seed + 7)
    mode_of = np.array(modes, dtype=object)
    judged = ~np.isnan(scores)
    split = ((scores >= 0.5) & judged).any(axis=1) & ((scores < 0.5) & judged).any(axis=1)
    n = len(modes)
    out: list[_Batch] = []
    counter = 0
    for mode in sorted(set(modes)):
        rows = np.flatnonzero(mode_of == mode)
        n_batches = min(math.ceil(rows.size / params.batch_size), max(1, round(params.max_batches * rows.size / n)))
        size = min(rows.size, n_batches * params.batch_size)
        weight = np.where(split[rows], 2.0, 1.0)
        picked = rng.choice(rows, size=size, replace=False, p=weight / weight.sum())
        for chunk in np.array_split(picked[rng.permutation(picked.size)], n_batches):
            handles = [f"t{counter + k + 1}" for k in range(chunk.size)]
            counter += chunk.size
            out.append(_Batch(str(mode), [int(r) for r in chunk], handles))
    return out


# ------------------------------------------------------------------------------------------- the discoverer


@dataclass
class LlmStats:
    calls: int = 0
    failed_calls: int = 0  # no reply (timeout, rate limit, connection, ...)
    rejected_replies: int = 0  # replies that did not parse or validate (each sent back once)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd_known: float = 0.0
    unpriced_calls: int = 0  # calls whose cost is unknown (no price in litellm's table or the config)
    batches: int = 0
    batches_failed: int = 0
    tasks_labelled: int = 0

    @property
    def usd(self) -> float | None:
        """Total cost, or None when any call's price was unknown."""
        return None if self.unpriced_calls else round(self.usd_known, 8)


class LlmDiscoverer:
    """`learn(..., discoverer=LlmDiscoverer(complete))`: the taxonomy from an LLM, prototypes from its labels."""

    def __init__(
        self,
        complete: Complete,
        params: LlmDiscoveryParams | None = None,
        agent_descriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.complete = complete
        self.params = params or LlmDiscoveryParams()
        self.descriptions = dict(agent_descriptions or {})
        self.stats = LlmStats()
        self.registry = _Registry()
        self.proto_skill: list[str] = []  # the LLM skill each prototype was built from
        self.labelled: list[tuple[str, str, str]] = []  # (query, mode, LLM skill) of prototype members
        self.heldout: list[tuple[str, str, str]] = []  # (query, mode, LLM skill) kept out of the prototypes
        self.dropped_skills: list[str] = []  # proposed but never assigned a task
        self.last_problem: str | None = None
        self.assignment: dict[int, str] = {}  # training row -> LLM skill

    # -- calls ---------------------------------------------------------------------------------------------

    def _call(self, messages: list[dict[str, str]]) -> Completion:
        self.stats.calls += 1
        result = self.complete(messages)
        self.stats.prompt_tokens += result.prompt_tokens or 0
        self.stats.completion_tokens += result.completion_tokens or 0
        if result.cost_usd is None:
            self.stats.unpriced_calls += result.text is not None
        else:
            self.stats.usd_known += result.cost_usd
        if result.text is None:
            self.stats.failed_calls += 1
            if result.error_class == "auth":
                raise LearnerFailed(f"the learner model refused the credentials: {result.message}")
        return result

    def _run_batch(self, batch: _Batch, prompter: _Prompter) -> bool:
        """Ask until the reply is usable (or the attempts or the call budget run out); True if applied."""
        p = self.params

        def opening() -> list[dict[str, str]]:
            first = not self.registry.in_mode(batch.mode)
            prompt = prompter.first(batch) if first else prompter.next(batch, self.registry)
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]

        messages = opening()
        tail: list[dict[str, str]] = []  # the last bad reply and what was wrong with it
        best: _Staged | None = None
        for _ in range(1 + p.max_retries):
            if self.stats.calls >= p.max_calls:
                break
            result = self._call(messages + tail)
            if result.text is None:
                self.last_problem = f"{result.error_class}: {result.message}"
                if result.error_class == "task" and len(batch.rows) > 4:  # e.g. context too long: show fewer
                    half = len(batch.rows) // 2
                    batch.rows, batch.handles = batch.rows[:half], batch.handles[:half]
                    messages, tail, best = opening(), [], None
                continue
            try:
                staged = self.registry.stage(parse_reply(result.text), batch.mode, batch.handles)
                problem = "; ".join(staged.problems)
            except ReplyError as exc:
                staged, problem = None, str(exc)
            if staged is not None and not staged.problems:
                self._apply(staged, batch)
                return True
            self.stats.rejected_replies += 1
            self.last_problem = problem
            if staged is not None and (best is None or len(staged.assignments) > len(best.assignments)):
                best = staged
            tail = [
                {"role": "assistant", "content": result.text[:4000]},
                {"role": "user", "content": feedback(problem)},
            ]
        if (
            best is not None
            and len(best.assignments) >= p.min_coverage * len(batch.handles)
            and (self.registry.in_mode(batch.mode) or best.skills)
        ):
            self._apply(best, batch)  # lenient: the usable part of the best reply
            return True
        return False

    def _apply(self, staged: _Staged, batch: _Batch) -> None:
        self.registry.apply(staged, batch.mode)
        handle_row = dict(zip(batch.handles, batch.rows, strict=True))
        for handle, skill_id in staged.assignments.items():
            self.assignment[handle_row[handle]] = skill_id

    # -- the hook ------------------------------------------------------------------------------------------

    def __call__(
        self, corpus: Corpus, train: Sequence[TraceTask], params: DiscoveryParams
    ) -> tuple[Taxonomy, list[np.ndarray], list[str]]:
        self.assignment = {}
        prompter = _Prompter(corpus, train, self.params, self.descriptions)
        for batch in plan_batches(corpus.modes, corpus.outcomes.scores, corpus.seed, self.params):
            self.stats.batches += 1
            if not self._run_batch(batch, prompter):
                self.stats.batches_failed += 1
            if self.stats.calls >= self.params.max_calls:
                break
        if not self.assignment:
            raise LearnerFailed(
                f"the learner model gave no usable taxonomy in {self.stats.calls} calls"
                + (f" (last problem: {self.last_problem})" if self.last_problem else "")
            )
        self.stats.tasks_labelled = len(self.assignment)
        return self._taxonomy(corpus, train, params)

    def _taxonomy(
        self, corpus: Corpus, train: Sequence[TraceTask], params: DiscoveryParams
    ) -> tuple[Taxonomy, list[np.ndarray], list[str]]:
        """Prototypes = micro-clusters of each skill's LLM-labelled tasks (minus the held-out ones)."""
        rng = np.random.default_rng(corpus.seed + 11)
        by_skill: dict[str, list[int]] = {}
        for row, skill_id in sorted(self.assignment.items()):
            by_skill.setdefault(skill_id, []).append(row)
        members: list[np.ndarray] = []
        proto_modes: list[str] = []
        categories: list[Category] = []
        for cat in self.registry.categories.values():
            leaves: list[Leaf] = []
            for skill_id in cat.skills:
                rows = np.array(by_skill.get(skill_id, []), dtype=np.int64)
                if rows.size == 0:
                    self.dropped_skills.append(skill_id)
                    continue
                n_out = int(self.params.heldout_fraction * rows.size) if rows.size >= 5 else 0
                out_rows = set(rng.choice(rows, size=n_out, replace=False).tolist()) if n_out else set()
                kept = np.array([r for r in rows if r not in out_rows], dtype=np.int64)
                self.heldout += [(corpus.queries[r], cat.mode, skill_id) for r in sorted(out_rows)]
                self.labelled += [(corpus.queries[r], cat.mode, skill_id) for r in kept]
                first = len(members)
                for micro in self._micro(corpus, kept, params):
                    members.append(micro)
                    proto_modes.append(cat.mode)
                    self.proto_skill.append(skill_id)
                leaves.append(Leaf(skill_id, tuple(range(first, len(members)))))
            if not leaves:
                continue
            rows_all = np.concatenate([members[p] for leaf in leaves for p in leaf.protos])
            labels = tuple(sorted({task for r in rows_all if (task := train[int(r)].task)})) or ("",)
            protos = tuple(p for leaf in leaves for p in leaf.protos)
            categories.append(with_leaves(Category(cat.id, cat.mode, labels, protos), leaves))
        return Taxonomy(tuple(categories)), members, proto_modes

    def _micro(self, corpus: Corpus, rows: np.ndarray, params: DiscoveryParams) -> list[np.ndarray]:
        k = max(1, min(params.max_micro, rows.size // self.params.micro_size))
        if k == 1:
            return [rows]
        assign = kmeans(corpus.features(rows, params.svd_dims), k, corpus.seed + int(rows[0]), spherical=True)
        return [rows[assign == j] for j in range(assign.max() + 1)]

    # -- after learning ------------------------------------------------------------------------------------

    def agreement(self, labeller: SkillLabeller, heldout: bool = True) -> float | None:
        """Share of LLM-labelled tasks whose top skill (by the learned labeller) covers the LLM's skill."""
        items = self.heldout if heldout else self.labelled
        if not items or not labeller.skill_ids or len(labeller.prototype_skills) != len(self.proto_skill):
            return None
        covers: dict[str, set[str]] = {}
        for final, llm in zip(labeller.prototype_skills, self.proto_skill, strict=True):
            covers.setdefault(final, set()).add(llm)
        found = labeller.weights_batch([q for q, _, _ in items], [m for _, m, _ in items])
        hits = sum(bool(w) and llm in covers.get(w[0][0], set()) for w, (_, _, llm) in zip(found, items, strict=True))
        return hits / len(items)

    def texts(self) -> dict[str, tuple[str, list[str], list[str]]]:
        """The LLM's description, indicators and examples per final skill id (a one-skill category gets its
        skill's, prefixed by the category's description)."""
        out: dict[str, tuple[str, list[str], list[str]]] = {}
        for cat in self.registry.categories.values():
            kept = [s for s in cat.skills if s not in self.dropped_skills]
            drafts = [self.registry.skills[s].draft for s in kept]
            for skill_id, d in zip(kept, drafts, strict=True):
                out[skill_id] = (d.description, d.indicators, d.examples)
            if len(drafts) == 1:
                d = drafts[0]
                out[cat.id] = (f"{cat.description} {d.description}".strip(), d.indicators, d.examples)
            elif drafts:
                indicators = list(dict.fromkeys(i for d in drafts for i in d.indicators))[:LIST_KEEP]
                examples = list(dict.fromkeys(e for d in drafts for e in d.examples[:1]))[:LIST_KEEP]
                out[cat.id] = (cat.description, indicators, examples)
        return out

    def metrics(self, labeller: SkillLabeller) -> dict[str, Any]:
        s = self.stats
        return {
            "calls": s.calls,
            "failed_calls": s.failed_calls,
            "rejected_replies": s.rejected_replies,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "usd": s.usd,
            "usd_known": round(s.usd_known, 8),
            "unpriced_calls": s.unpriced_calls,
            "batches": s.batches,
            "batches_failed": s.batches_failed,
            "tasks_labelled": s.tasks_labelled,
            "skills_proposed": len(self.registry.skills),
            "skills_dropped": list(self.dropped_skills),
            "label_agreement_llm_heldout": self.agreement(labeller, heldout=True),
            "label_agreement_llm_train": self.agreement(labeller, heldout=False),
            "n_heldout": len(self.heldout),
        }


def with_llm_texts(
    document: HandbookDocument, texts: Mapping[str, tuple[str, list[str], list[str]]]
) -> HandbookDocument:
    """Skills described in the LLM's words, keeping the data's sentence on how the agents fare ('Agents: ...')."""
    skills: list[Skill] = []
    for skill in document.skills:
        found = texts.get(skill.id)
        if found is None:
            skills.append(skill)
            continue
        description, indicators, examples = found
        cut = skill.description.rfind("Agents:")
        evidence = skill.description[cut:] if cut >= 0 else ""
        skills.append(
            skill.model_copy(
                update={
                    "description": f"{description} {evidence}".strip()[:DESCRIPTION_MAX],
                    "indicators": indicators or skill.indicators,
                    "examples": examples or skill.examples,
                }
            )
        )
    return document.model_copy(update={"skills": skills})
