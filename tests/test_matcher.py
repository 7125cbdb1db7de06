"""The lexical matcher: FTS5 + BM25 over a real SQLite handbook, no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skillorchestra.handbook.matcher import LexicalMatcher, query_terms, scores_to_weights
from skillorchestra.handbook.models import Skill
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

SKILLS = [
    Skill(
        id="code.sorting",
        mode="code",
        description="Sort lists and arrays of numbers or records",
        indicators=["order items ascending"],
        examples=["sort these values by price"],
    ),
    Skill(id="code.regex", mode="code", description="Write regular expressions that match text patterns"),
    Skill(
        id="search.web",
        mode="search",
        description="Look up facts about current events on the web",
        indicators=["latest news"],
    ),
    Skill(id="search.docs", mode="search", description="Find the documentation of a library for sorting data"),
]


@pytest.fixture
def handbook(tmp_path: Path) -> Iterator[Handbook]:
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    for skill in SKILLS:
        book.upsert_skill(skill)
    yield book
    book.store.close()


def match(book: Handbook, text: str, mode: str | None = None, top_k: int = 3) -> list[tuple[str, float]]:
    return LexicalMatcher(book.store).match(text, mode, top_k)


def test_stemming_matches_inflected_words(handbook: Handbook) -> None:
    result = match(handbook, "the records were sorted into ordered arrays", mode="code")
    assert result and result[0][0] == "code.sorting"
    assert match(handbook, "regular expression matching", mode="code")[0][0] == "code.regex"


def test_mode_filter_keeps_only_that_mode(handbook: Handbook) -> None:
    text = "sorting library documentation"
    assert {s for s, _ in match(handbook, text, mode="search")} <= {"search.docs", "search.web"}
    assert match(handbook, text, mode="search")[0][0] == "search.docs"
    assert {s for s, _ in match(handbook, text, mode="code")} == {"code.sorting"}
    # unfiltered, the weak code match falls below the keep ratio of the best (search) match
    assert match(handbook, text, top_k=5) == [("search.docs", 1.0)]


@pytest.mark.parametrize(
    "text",
    ["sort the numbers and find the latest news", "regular sort web documentation patterns", "sorting"],
)
def test_weights_are_positive_and_sum_to_one(handbook: Handbook, text: str) -> None:
    for top_k in (1, 2, 4):
        result = match(handbook, text, top_k=top_k)
        assert 1 <= len(result) <= top_k
        assert all(w > 0 for _, w in result)
        assert sum(w for _, w in result) == pytest.approx(1.0)
        assert [w for _, w in result] == sorted((w for _, w in result), reverse=True)


@pytest.mark.parametrize("text", ["zebra quantum marmalade", "the of and to", "", "!!! ??? ..."])
def test_no_match_gives_an_empty_list(handbook: Handbook, text: str) -> None:
    assert match(handbook, text) == []


@pytest.mark.parametrize(
    "text",
    [
        'sort" OR "x',
        "NEAR(sort regex, 2)",
        "sort*",
        "^sort",
        "code.sorting: sort",
        "(sort AND",
        "-sort +regex",
        "{id description}: sort",
        "AND OR NOT NEAR",
        '"',
        "'; DROP TABLE skills; --",
        "sort\x00regex",
        "x" * 5000,
    ],
)
def test_fts_syntax_in_the_text_does_not_raise(handbook: Handbook, text: str) -> None:
    result = match(handbook, text)
    assert all(skill in {s.id for s in SKILLS} for skill, _ in result)
    assert handbook.store.counts()["skills"] == len(SKILLS)


def test_query_terms_are_quoted_distinct_and_bounded() -> None:
    assert query_terms('Sort "sort" the NEAR(x)') == ['"sort"', '"near"']
    assert len(query_terms(" ".join(f"w{i}" for i in range(500)))) == 64


def test_index_follows_edits_and_deletes(handbook: Handbook) -> None:
    handbook.upsert_skill(SKILLS[1].model_copy(update={"description": "Parse dates in log files"}))
    assert match(handbook, "regular expressions patterns", mode="code") == []
    assert match(handbook, "parse the log dates", mode="code")[0][0] == "code.regex"
    handbook.delete_skill("code.regex")
    assert match(handbook, "parse the log dates", mode="code") == []


def test_scores_to_weights_drops_incidental_matches() -> None:
    assert scores_to_weights([("a", 10.0), ("b", 2.0)], 3) == [("a", 1.0)]  # below 35% of the best
    assert scores_to_weights([("a", 10.0), ("b", 5.0)], 3) == [("a", 10 / 15), ("b", 5 / 15)]
    assert scores_to_weights([("b", 4.0), ("a", 4.0), ("c", 4.0)], 2) == [("a", 0.5), ("b", 0.5)]
    assert scores_to_weights([("a", 0.0), ("b", 0.0)], 5) == [("a", 0.5), ("b", 0.5)]
    assert scores_to_weights([], 5) == []


def test_non_ascii_words_match(tmp_path: Path) -> None:
    book = Handbook(HandbookStore(tmp_path / "h.db"))
    book.upsert_skill(Skill(id="translate.de", mode="answer", description="Übersetzung ins Deutsche"))
    book.upsert_skill(Skill(id="answer.facts", mode="answer", description="Short factual answers"))
    assert match(book, "Übersetzung bitte")[:1] == [("translate.de", 1.0)]
