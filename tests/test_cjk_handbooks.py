"""Handbooks written in Chinese or Japanese: the lexical matcher reads a CJK step by character bigrams
(handbook/cjk_matcher.py) beside FTS5, which keeps an unspaced run as one token and so matched a skill only
holding the very same run. Real SQLite handbooks in tmp_path; bench/multilingual.py measures it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skillorchestra.handbook.embedding import load_default_embedder
from skillorchestra.handbook.matcher import LexicalMatcher, query_terms, scores_to_weights
from skillorchestra.handbook.models import Agent, Skill
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

ZH_SKILLS = [
    Skill(id="code.functions", mode="code", description="编写处理列表和字符串的Python函数", indicators=["写一个函数"]),
    Skill(id="code.sql", mode="code", description="编写SQL查询语句，统计数据库中的数据", indicators=["查询语句"]),
    Skill(
        id="math.word_problems", mode="answer", description="解答需要多步计算的数学应用题", indicators=["一共有多少"]
    ),
    Skill(id="knowledge.history", mode="answer", description="回答关于历史和朝代的问题", indicators=["哪个朝代"]),
    Skill(id="writing.poetry", mode="answer", description="创作诗歌，包括古诗和绝句", indicators=["写一首诗"]),
]
EN_SKILLS = [
    Skill(id="code.regex", mode="code", description="Write regular expressions that match text patterns"),
    Skill(id="search.docs", mode="answer", description="Find the documentation of a library for sorting data"),
    Skill(id="code.sorting", mode="code", description="Sort lists and arrays of numbers", examples=["sort by price"]),
]


def build(path: Path, skills: list[Skill]) -> Handbook:
    book = Handbook(HandbookStore(path))
    for skill in skills:
        book.upsert_skill(skill)
    modes = sorted({skill.mode for skill in skills})
    book.upsert_agent(Agent(id="solo", modes=modes, input_per_mtok=1.0, output_per_mtok=1.0))
    return book


@pytest.fixture
def zh(tmp_path: Path) -> Iterator[Handbook]:
    book = build(tmp_path / "zh.db", ZH_SKILLS)
    yield book
    book.store.close()


def match(book: Handbook, text: str, mode: str | None = None, top_k: int = 3) -> list[tuple[str, float]]:
    return LexicalMatcher(book.store).match(text, mode, top_k)


@pytest.mark.parametrize(
    ("text", "skill"),
    [
        ("写一个函数，对列表进行排序", "code.functions"),
        ("帮我写一条查询语句，统计每个客户的订单", "code.sql"),
        ("小明有5个苹果，又买了3个，一共有多少个？", "math.word_problems"),
        ("秦始皇是哪个朝代的皇帝？", "knowledge.history"),
        ("以秋天为题写一首诗", "writing.poetry"),
        ("用Python写一个排序函数", "code.functions"),  # Latin word and bigrams add up
        ("诗？", "writing.poetry"),  # a one-ideograph word: FTS5's terms drop single characters
        ("写一个函\u200b数", "code.functions"),  # a zero-width space pasted mid-word
    ],
)
def test_a_chinese_step_finds_the_skill_it_demands(zh: Handbook, text: str, skill: str) -> None:
    decision = zh.route(RouteRequest(text=text, top_k=3))
    assert decision.skills_source == "lexical"
    assert decision.skills[0].skill_id == skill
    assert sum(s.weight for s in decision.skills) == pytest.approx(1.0)


def test_characters_without_a_shared_bigram_route_at_agent_level(zh: Handbook) -> None:
    """Only adjacent pairs count: the same characters re-ordered so no pair is shared find nothing."""
    assert zh.route(RouteRequest(text="一共有多少")).skills[0].skill_id == "math.word_problems"
    scrambled = zh.route(RouteRequest(text="共一多有少"))
    assert scrambled.skills == [] and scrambled.skills_source == "agent level"


def test_the_mode_filter_and_top_k_hold(zh: Handbook) -> None:
    text = "写一个函数，生成一首诗"  # a function that writes a poem: a code skill and an answer skill
    assert {s for s, _ in match(zh, text)} == {"code.functions", "writing.poetry"}
    assert match(zh, text, mode="code") == [("code.functions", 1.0)]
    assert match(zh, text, mode="answer") == [("writing.poetry", 1.0)]
    assert match(zh, text, mode="nosuchmode") == []
    assert len(match(zh, text, top_k=1)) == 1 and match(zh, text, top_k=1)[0][1] == 1.0
    assert match(zh, text, top_k=0) == []


def test_common_bigrams_count_less_than_rare_ones(tmp_path: Path) -> None:
    """idf: "编写" stands in two of three skills (twice in one), "诗歌" in one; a step holding one of each goes to the
    poem, where counting pairs alone would send it to the skill saying "编写" twice."""
    book = build(
        tmp_path / "idf.db",
        [
            Skill(id="a.code", mode="answer", description="编写程序，编写测试"),
            Skill(id="b.docs", mode="answer", description="编写技术文档"),
            Skill(id="c.poem", mode="answer", description="诗歌创作"),
        ],
    )
    assert match(book, "编写诗歌")[0][0] == "c.poem"
    book.store.close()


def test_a_skill_edit_is_read_by_the_next_step_even_from_another_connection(tmp_path: Path) -> None:
    book = build(tmp_path / "live.db", ZH_SKILLS)
    matcher = LexicalMatcher(book.store)
    assert matcher.match("拟一副对联", None, 3) == []
    other = Handbook(HandbookStore(tmp_path / "live.db"))  # another process's write: data_version moves
    other.upsert_skill(ZH_SKILLS[4].model_copy(update={"indicators": ["写一首诗", "对联"]}))
    assert matcher.match("拟一副对联", None, 3) == [("writing.poetry", 1.0)]
    other.store.close()
    book.store.close()


def test_a_new_state_with_the_same_skill_texts_keeps_the_index(zh: Handbook) -> None:
    matcher = LexicalMatcher(zh.store)
    assert matcher.match("写一首诗", None, 3)[0][0] == "writing.poetry"
    index = matcher.cjk.current()
    zh.upsert_agent(Agent(id="second", modes=["answer"], input_per_mtok=2.0, output_per_mtok=2.0))
    assert matcher.cjk.current() is index


def test_a_japanese_handbook_and_half_width_kana(tmp_path: Path) -> None:
    book = build(
        tmp_path / "ja.db",
        [
            Skill(id="data.sql", mode="code", description="データベースからデータを集計するクエリを書く"),
            Skill(id="writing.haiku", mode="answer", description="季語を使って俳句を作る"),
        ],
    )
    assert match(book, "秋の季語で俳句を一句詠んでください")[0][0] == "writing.haiku"
    assert match(book, "注文テーブルを集計するクエリ")[0][0] == "data.sql"
    assert match(book, "ﾃﾞｰﾀﾍﾞｰｽ")[0][0] == "data.sql"  # half-width katakana, as an old IME types it
    book.store.close()


@pytest.mark.parametrize(
    "text",
    [
        "sort these values by price",
        "regular expression matching for text",
        "documentation of a sorting library",
        "nothing in common here",
    ],
)
def test_english_steps_take_fts5_alone_in_a_mixed_handbook(tmp_path: Path, text: str) -> None:
    """A handbook of Chinese and English skills: English steps get exactly FTS5's answer, Chinese ones their skill."""
    book = build(tmp_path / "mixed.db", ZH_SKILLS + EN_SKILLS)
    fts5 = scores_to_weights(book.store.search_skills(" OR ".join(query_terms(text)), None, 9), 3)
    assert match(book, text) == fts5
    assert match(book, "写一个函数，对列表进行排序")[0][0] == "code.functions"
    assert match(book, "以秋天为题写一首诗", top_k=1) == [("writing.poetry", 1.0)]
    book.store.close()


EMBEDDER, WHY = load_default_embedder()


@pytest.mark.skipif(EMBEDDER is None, reason=f"MiniLM weights not installed: {WHY}")
def test_the_semantic_matcher_leaves_a_cjk_step_the_bigrams_match_to_the_lexical_one(tmp_path: Path) -> None:
    """The English MiniLM knows kana and guesses at Japanese steps (6 of 10 in bench/multilingual.py); where the
    step's characters match a skill it is read lexically (10 of 10), saying so; where they match none, as before."""
    book = build(
        tmp_path / "ja.db",
        [
            Skill(id="data.sql", mode="code", description="データベースからデータを集計するクエリを書く"),
            Skill(id="writing.haiku", mode="answer", description="季語を使って俳句を作る"),
        ],
    )
    matcher = SemanticMatcher(book.store, load=lambda: (EMBEDDER, ""))
    weights, source = matcher.infer("秋の季語で俳句を一句詠んでください", None, 3)
    assert weights[0][0] == "writing.haiku"
    assert source == "lexical (a Chinese or Japanese step, read by its characters)"
    _, unmatched = matcher.infer("ありがとう", None, 3)  # no pair of characters in common: the model reads it
    assert not unmatched.startswith("lexical (a Chinese or Japanese step")
    book.store.close()


@pytest.mark.skipif(EMBEDDER is None, reason=f"MiniLM weights not installed: {WHY}")
def test_an_english_step_quoting_a_chinese_name_stays_semantic(tmp_path: Path) -> None:
    """Review: one ideograph had sent any step that FTS5 matched at all to the lexical matcher, saying it was read
    by its characters, though no pair of them matched."""
    book = build(tmp_path / "mixed.db", [*ZH_SKILLS, *EN_SKILLS])
    matcher = SemanticMatcher(book.store, load=lambda: (EMBEDDER, ""))
    _, source = matcher.infer("Write a SQL query that selects rows where name = '张三' and sorts them", None, 3)
    assert source == "semantic"
    book.store.close()


def test_a_chinese_word_in_an_english_step_weighs_as_much_of_the_step_as_it_is(tmp_path: Path) -> None:
    """Review: the pairs of "你好世界" outscored every English word FTS5 matched, and a translation skill took the
    step; the pairs now count by their share of the step's letters."""
    book = build(
        tmp_path / "mixed.db",
        [
            *ZH_SKILLS,
            *EN_SKILLS,  # FTS5's idf is ~0 in a handbook of two skills: this one has ten
            Skill(id="code.python", mode="code", description="Write Python functions that print text to the console"),
            Skill(id="translate.zh", mode="code", description="翻译中文句子，例如你好世界、世界你好"),
        ],
    )
    assert match(book, "Write a Python function that prints 你好世界 to the console")[0][0] == "code.python"
    assert match(book, "把你好世界翻译成英文")[0][0] == "translate.zh"  # a step in Chinese is read by its pairs
    book.store.close()
