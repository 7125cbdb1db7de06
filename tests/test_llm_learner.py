"""The LLM learner against the fake OpenAI-compatible server answering with taxonomy JSON (and bad JSON first)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import FakeOpenAI
from learning_data import PRICES, SWAP, WORDS, family, unlabelled_swap

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.learning.llm_discovery import (
    LearnerFailed,
    LlmDiscoveryParams,
    ReplyError,
    parse_reply,
    plan_batches,
)
from skillorchestra.handbook.learning.replay import replay
from skillorchestra.handbook.traces import write_tasks
from skillorchestra.server.cli import main
from skillorchestra.server.llm_learner import learn_with_llm

TASK_LINE = re.compile(r"^\[(t\d+)\] (.*)$", re.M)
SKILL_OF = {"chemistry": "chem.reactions", "poetry": "writing.verse"}
TAXONOMY = [
    {
        "id": "chem",
        "description": "Chemistry questions.",
        "skills": [
            {
                "id": "chem.reactions",
                "description": "Reasoning about reactions, acids and catalysts.",
                "indicators": ["acid", "catalyst", "titration"],
                "examples": ["acid titration catalyst"],
            }
        ],
    },
    {
        "id": "writing",
        "description": "Poetry.",
        "skills": [{"id": "writing.verse", "description": "Writing in verse forms.", "indicators": ["sonnet"]}],
    },
]


class TaxonomyBot:
    """The learner's side of the conversation: a keyword classifier that answers in the requested JSON.

    `bad_first` replies (malformed JSON, then an undefined skill) precede the first good reply."""

    def __init__(self, bad_first: list[str] | None = None) -> None:
        self.bad_first = list(bad_first or [])
        self.replies: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        tasks = TASK_LINE.findall(body["messages"][1]["content"])
        if self.bad_first:
            reply = self.bad_first.pop(0)
        else:
            first = "Build the taxonomy" in body["messages"][1]["content"]
            assignments = {}
            for handle, query in tasks:
                words = set(query.split())
                topic = max(SKILL_OF, key=lambda t: len(words & set(WORDS[t])))
                assignments[handle] = SKILL_OF[topic]
            reply = "```json\n" + json.dumps({"categories": TAXONOMY if first else [], "assignments": assignments})
            reply += "\n```"
        self.replies.append(reply)
        return reply


def usage(body: dict[str, Any], reply: str) -> tuple[int, int]:
    """The fake server's documented usage formula."""
    return len("".join(m["content"] for m in body["messages"])) // 4 + 1, len(reply.split())


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def held_out(topic: str, seed: int) -> list:
    return family(np.random.default_rng(seed), topic, 15, SWAP[topic], None, f"held-{topic}")


def test_llm_taxonomy_routes_each_family_to_its_strong_agent(server: FakeOpenAI) -> None:
    bot = TaxonomyBot(['{"categories": [{"id": "chem", "skills": [', '{"categories": [], "assignments": {"t1": "x"}}'])
    server.responder = bot
    tasks = unlabelled_swap(n=100)
    result = learn_with_llm(
        tasks, PRICES, "openai/learner", api_base=server.api_base, input_per_mtok=3.0, output_per_mtok=15.0,
        lambda_=0.05, seed=0,
    )  # fmt: skip
    requests = server.chat_requests("learner")
    learner = result.metrics["learner"]
    # Two bad replies were sent back with what was wrong, then the batch went through.
    assert learner["rejected_replies"] == 2 and learner["batches_failed"] == 0
    second, third = requests[1].body["messages"], requests[2].body["messages"]
    assert second[-2] == {"role": "assistant", "content": bot.replies[0]}
    assert "incomplete" in second[-1]["content"]
    assert "no categories with skills" in third[-1]["content"] and "t1" in third[-1]["content"]
    # Every call is counted, with its tokens and dollars at the learner's prices.
    assert result.llm_calls == len(requests) == learner["batches"] + 2 <= LlmDiscoveryParams().max_calls
    tokens = [usage(r.body, reply) for r, reply in zip(requests, bot.replies, strict=True)]
    assert result.metrics["tokens"] == {"prompt": sum(p for p, _ in tokens), "completion": sum(c for _, c in tokens)}
    expected = sum(p * 3.0 + c * 15.0 for p, c in tokens) / 1e6
    assert result.metrics["usd"] == pytest.approx(expected) and result.usd == pytest.approx(expected)
    # The prompt shows each agent's outcome and contrasting cases.
    prompt = requests[0].body["messages"][1]["content"]
    assert "A = alpha (strong on chemistry)" in prompt and "Contrasting cases" in prompt
    assert re.search(r"^\s+A[+-] B[+-] C[+-]$", prompt, re.M)
    # The LLM's skills, described in its words; each family goes to its strong agent.
    skills = {s.id: s for s in result.document.skills}
    assert {"chem", "writing"} <= set(skills)
    assert skills["chem"].description.startswith("Chemistry questions. Reasoning about reactions")
    assert "Agents: strongest alpha" in skills["chem"].description and skills["chem"].indicators[0] == "acid"
    assert "LLM learner openai/learner" in result.document.description
    for topic, strong in (("chemistry", "alpha"), ("poetry", "beta")):
        assert set(replay(result.document, result.labeller, held_out(topic, 7), PRICES, 0.05).choices) == {strong}
    # Identification is the labeller's, and it agrees with the LLM on tasks kept out of its prototypes.
    assert learner["n_heldout"] > 0 and learner["label_agreement_llm_heldout"] >= 0.95
    assert result.metrics["label_agreement_llm"] == learner["label_agreement_llm_heldout"]


def test_unknown_price_is_null_and_bad_json_forever_fails_within_the_budget(server: FakeOpenAI) -> None:
    server.responder = lambda body: "Sure! Here are some categories: chemistry, poetry."
    params = LlmDiscoveryParams(max_calls=5, max_retries=1)
    with pytest.raises(LearnerFailed, match="no usable taxonomy in 5 calls.*no JSON object"):
        learn_with_llm(unlabelled_swap(n=60), PRICES, "openai/babbler", api_base=server.api_base, discovery=params)
    assert len(server.chat_requests()) == 5
    server.clear()
    server.responder = TaxonomyBot()
    result = learn_with_llm(unlabelled_swap(n=60), PRICES, "openai/house-model-9", api_base=server.api_base)
    assert result.metrics["usd"] is None and result.metrics["learner"]["unpriced_calls"] == result.llm_calls > 0
    assert result.metrics["tokens"]["prompt"] > 0


def test_a_usage_no_model_could_have_leaves_the_learners_cost_unknown(server: FakeOpenAI) -> None:
    """As delegate's calls: a report of 1e18 prompt tokens is not priced (review: it was billed $3e12)."""
    server.responder = TaxonomyBot()
    server.behaviours["huge"] = "HUGEUSAGE"
    result = learn_with_llm(
        unlabelled_swap(n=60), PRICES, "openai/huge", api_base=server.api_base, input_per_mtok=3.0, output_per_mtok=15.0
    )
    assert result.llm_calls > 0 and result.metrics["usd"] is None
    assert result.metrics["learner"]["unpriced_calls"] == result.llm_calls


def test_refused_credentials_stop_at_once_without_leaking_the_key(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARNER_KEY", "sk-learner-SECRET-42")
    server.behaviours["locked"] = "FAIL401"
    with pytest.raises(LearnerFailed) as info:
        learn_with_llm(unlabelled_swap(n=30), PRICES, "openai/locked", server.api_base, "LEARNER_KEY")
    assert len(server.chat_requests()) == 1 and "SECRET" not in str(info.value)


def test_an_unset_key_variable_fails_before_any_call(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named key that is not there would make every batch fail on auth in turn; it is refused up front."""
    monkeypatch.delenv("LEARNER_KEY_UNSET", raising=False)
    server.responder = TaxonomyBot()
    with pytest.raises(
        InvalidInput, match="--learner-api-key-env='LEARNER_KEY_UNSET': expected the name of a set environment"
    ):
        learn_with_llm(unlabelled_swap(n=30), PRICES, "openai/learner", server.api_base, "LEARNER_KEY_UNSET")
    assert server.chat_requests() == []
    with pytest.raises(InvalidInput) as info:  # a key pasted where its variable's name goes is not echoed
        learn_with_llm(unlabelled_swap(n=30), PRICES, "openai/learner", server.api_base, "sk-learner-SECRET-42")
    assert "--learner-api-key-env='***'" in str(info.value) and "SECRET" not in str(info.value)
    assert server.chat_requests() == []


def test_reply_parsing() -> None:
    reply = parse_reply(
        'Here you go:\n```json\n{"categories": [], "assignments": [{"task": "t1", "skill": "a.b"}]}\n```'
    )
    assert reply.assignments == {"t1": "a.b"}
    long = parse_reply(json.dumps({"categories": TAXONOMY, "assignments": {}, "notes": "extra keys are ignored"}))
    assert long.categories[0].skills[0].indicators == ["acid", "catalyst", "titration"]
    with pytest.raises(ReplyError, match="assignments: Field required"):
        parse_reply('{"categories": []}')
    with pytest.raises(ReplyError, match="invalid JSON"):
        parse_reply('{"categories": [}')


def test_batches_keep_llmrouter_sized_data_under_50_calls() -> None:
    rng = np.random.default_rng(0)
    n = 4486  # LLMRouter's training split after validation
    scores = (rng.random((n, 9)) < 0.6).astype(float)
    modes = ["answer"] * (n - 500) + ["code"] * 500
    params = LlmDiscoveryParams()
    batches = plan_batches(modes, scores, 0, params)
    assert len(batches) <= params.max_batches + 1 and all(len(b.rows) <= params.batch_size for b in batches)
    assert {b.mode for b in batches} == {"answer", "code"}
    handles = [h for b in batches for h in b.handles]
    assert len(set(handles)) == len(handles) and len({r for b in batches for r in b.rows}) == len(handles)
    assert params.max_calls <= 50
    assert plan_batches(modes, scores, 0, params)[0].rows == batches[0].rows  # seeded


def test_a_reply_that_copies_the_prompts_example_shape_is_refused_and_nothing_is_written(
    server: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fake server echoes the prompt (as small local models often do): the JSON in it is the example shape,
    whose placeholders (category_id, 'a short quote of a task above', ...) must never become the taxonomy."""
    with pytest.raises(LearnerFailed, match="no usable taxonomy"):
        learn_with_llm(unlabelled_swap(n=60), PRICES, "openai/echo", api_base=server.api_base, lambda_=0.05)
    first, second = server.chat_requests("echo")[:2]
    assert "category_id" in first.body["messages"][1]["content"]  # the prompt carries the example shape...
    feedback = second.body["messages"][-1]["content"]  # ...which the echo repeats, and is told so
    assert "repeats the placeholders of the example shape" in feedback and "'category_id'" in feedback
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    write_tasks(data, unlabelled_swap(n=60))
    db = tmp_path / "llm.db"
    argv = ["learn", "--data", str(data), "--db", str(db), "--matcher", "lexical", "--learner", "openai/echo"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--learner-api-base", server.api_base])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == "" and "no usable taxonomy" in err
    assert not db.exists()  # nothing written


def test_placeholders_are_refused_field_by_field() -> None:
    reply = json.loads(json.dumps({"categories": TAXONOMY, "assignments": {"t1": "chem.reactions"}}))
    assert parse_reply(json.dumps(reply)).categories[0].id == "chem"  # a real taxonomy passes
    reply["categories"][1]["skills"][0]["examples"] = ["A short quote of a task above."]
    with pytest.raises(ReplyError, match="example 'A short quote of a task above.'"):
        parse_reply(json.dumps(reply))
    reply = {"categories": [{"id": "chem", "skills": [{"id": "chem.skill_name"}]}], "assignments": {}}
    with pytest.raises(ReplyError, match="id 'chem.skill_name'"):
        parse_reply(json.dumps(reply))


def dropping(bot: TaxonomyBot, keep: Callable[[list[str], bool], list[str]]) -> Callable[[dict[str, Any]], str]:
    """The bot's reply with only the handles `keep(handles, retry)` assigned."""

    def respond(body: dict[str, Any]) -> str:
        reply = json.loads(bot(body).removeprefix("```json\n").removesuffix("\n```"))
        retry = body["messages"][-1]["content"].startswith("That reply could not be used")
        handles = keep(list(reply["assignments"]), retry)
        reply["assignments"] = {h: reply["assignments"][h] for h in handles}
        return json.dumps(reply)

    return respond


def test_a_reply_that_leaves_tasks_unassigned_is_sent_back(server: FakeOpenAI) -> None:
    """The prompt says to assign every task: a reply missing one is sent back naming it, and the full reply used."""
    server.responder = dropping(TaxonomyBot(), lambda handles, retry: handles if retry else handles[:-1])
    result = learn_with_llm(unlabelled_swap(n=60), PRICES, "openai/learner", api_base=server.api_base, lambda_=0.05)
    learner = result.metrics["learner"]
    requests = server.chat_requests("learner")
    assert learner["batches_failed"] == 0 and learner["rejected_replies"] == learner["batches"] > 0
    assert len(requests) == 2 * learner["batches"]
    handles = TASK_LINE.findall(requests[0].body["messages"][1]["content"])
    feedback = requests[1].body["messages"][-1]["content"]
    assert f"1 of the {len(handles)} tasks without a skill ({handles[-1][0]})" in feedback
    assert learner["tasks_labelled"] == sum(
        len(TASK_LINE.findall(r.body["messages"][1]["content"])) for r in requests[::2]
    )
    assert {"chem", "writing"} <= {s.id for s in result.document.skills}


def test_a_reply_that_labels_too_few_tasks_is_never_used(server: FakeOpenAI) -> None:
    """Under min_coverage of a batch even after the retries, the batch fails: one labelled task is no taxonomy."""
    server.responder = dropping(TaxonomyBot(), lambda handles, retry: handles[:1])
    with pytest.raises(LearnerFailed, match="no usable taxonomy.*tasks without a skill"):
        learn_with_llm(unlabelled_swap(n=60), PRICES, "openai/learner", api_base=server.api_base)
