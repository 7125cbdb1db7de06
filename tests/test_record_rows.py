"""The rows a record writes, column by column, against a reference built the way the store wrote them before its hot
path was trimmed (the result column from model_dump, cost rows from CostStats(**row), the agent check in its own
statement): a faster record must store the very same text and numbers, and stay equal to snapshot + replay."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from skillorchestra.handbook.evidence_update import updated_competence
from skillorchestra.handbook.models import Agent, Competence, CostStats, HandbookDocument, Mode, Skill, SkillDemand
from skillorchestra.handbook.posterior import weighted_mean_update
from skillorchestra.handbook.schema import dumps
from skillorchestra.handbook.service import Handbook, OutcomeReport, RouteRequest
from skillorchestra.handbook.store import HandbookStore
from skillorchestra.handbook.store_sql import COST_NUMBERS, NO_COSTS

DOCUMENT = HandbookDocument(
    modes=[Mode(id="code"), Mode(id="search")],
    skills=[
        Skill(id="code", mode="code", description="programming"),
        Skill(id="code.python", mode="code", parent_id="code", description="write python functions"),
        Skill(id="code.sql", mode="code", parent_id="code", description="write sql queries"),
        Skill(id="search.web", mode="search", description="look up facts on the web"),
    ],
    agents=[Agent(id="a", input_per_mtok=0.1, output_per_mtok=0.2), Agent(id="b", input_per_mtok=1.0)],
    competence=[Competence(agent_id="a", skill_id="code.python", alpha=3.5, beta=2.25)],
)
DEMANDS = [SkillDemand(skill_id="code.python", weight=0.6), SkillDemand(skill_id="code.sql", weight=0.4)]


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql)]
    finally:
        conn.close()


def reference_costs(
    agent_id: str, demands: list[tuple[str, float]], current: dict[str, tuple[Any, ...]], payload: dict[str, Any]
) -> list[CostStats]:
    """updated_costs as it was written before (CostStats(**row)), for a task outcome."""
    reported = [
        (mean, count, payload.get(key))
        for mean, count, key in (
            ("mean_prompt_tokens", "n_prompt_tokens", "prompt_tokens"),
            ("mean_completion_tokens", "n_completion_tokens", "completion_tokens"),
            ("mean_latency_s", "n_latency_s", "latency_s"),
            ("mean_step_tokens", "n_step_tokens", "step_tokens"),
        )
        if payload.get(key) is not None
    ]
    out = []
    for skill_id, weight in demands:
        row = dict(zip(COST_NUMBERS, current.get(skill_id, NO_COSTS), strict=True))
        row["n"], row["mean_cost_usd"], row["m2_cost"] = weighted_mean_update(
            row["n"], row["mean_cost_usd"], row["m2_cost"], weight, payload["cost_usd"]
        )
        for mean, count, value in reported:
            row[count] += weight
            row[mean] += (value - row[mean]) * weight / row[count]
        out.append(CostStats(agent_id=agent_id, skill_id=skill_id, **row))
    return out


def test_a_record_writes_the_reference_rows_column_by_column(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(DOCUMENT, source="import")
    handbook = Handbook(store)
    handbook.arrays()  # the record patches the cached arrays, as a serving handbook does
    reports = [
        OutcomeReport(decision_id="", reward=0.8125, cost_usd=0.0031, prompt_tokens=120, latency_s=1.5),
        OutcomeReport(decision_id="", success=False, cost_usd=0.002, completion_tokens=40),
        OutcomeReport(decision_id="", reward=0.1, cost_usd=0.0),
    ]
    for index, template in enumerate(reports):
        decision = handbook.route(RouteRequest(text=f"write a python function {index}", skills=DEMANDS))
        agent_id = decision.agent_id
        before_competence = {
            r["skill_id"]: (r["alpha"], r["beta"])
            for r in rows(db, f"SELECT * FROM competence WHERE agent_id = '{agent_id}'")
        }
        before_costs = {
            r["skill_id"]: tuple(r[name] for name in COST_NUMBERS)
            for r in rows(db, f"SELECT * FROM cost_stats WHERE agent_id = '{agent_id}'")
        }
        stored = store.decision(decision.decision_id)
        assert stored is not None
        demanded = [(s, w) for s, w in json.loads(stored["skills"])]
        report = OutcomeReport(**{**template.__dict__, "decision_id": decision.decision_id})
        result = handbook.record(report)
        assert result.applied

        reward = 1.0 if report.success else 0.0 if report.success is not None else report.reward
        assert reward is not None
        competence = updated_competence(agent_id, demanded, before_competence, reward, None, True)
        payload = {
            "reward": reward,
            "error_class": "task",
            "cost_usd": report.cost_usd,
            "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens,
            "latency_s": report.latency_s,
        }
        event = {
            "decision_id": decision.decision_id,
            "agent_id": agent_id,
            "skills": [list(pair) for pair in demanded],
            "mode": None,
            "gamma": None,
            "forget_by_weight": True,
            "step_tokens": stored["step_tokens"],
            **payload,
        }
        costs = reference_costs(agent_id, demanded, before_costs, event)

        (outcome,) = rows(db, f"SELECT * FROM outcomes WHERE decision_id = '{decision.decision_id}'")
        assert outcome["result"] == dumps([c.model_dump() for c in competence])
        assert outcome["payload"] == dumps(payload)
        assert {k: outcome[k] for k in ("agent_id", "session_id", "error_class", *payload)} == {
            "agent_id": agent_id,
            "session_id": None,
            **payload,
        }
        (logged,) = rows(db, "SELECT kind, payload, version FROM events ORDER BY seq DESC LIMIT 1")
        assert logged == {"kind": "outcome", "payload": dumps(event), "version": store.current_version()}
        for c in competence:
            (row,) = rows(db, f"SELECT * FROM competence WHERE agent_id = '{agent_id}' AND skill_id = '{c.skill_id}'")
            assert row == c.model_dump()  # every column, bit for bit (== on floats)
        for k in costs:
            (row,) = rows(db, f"SELECT * FROM cost_stats WHERE agent_id = '{agent_id}' AND skill_id = '{k.skill_id}'")
            assert row == k.model_dump()
        assert [(u.skill_id, u.alpha, u.beta) for u in result.updated] == [
            (c.skill_id, c.alpha, c.beta) for c in competence
        ]
    live = (
        rows(db, "SELECT * FROM competence ORDER BY agent_id, skill_id"),
        rows(db, "SELECT * FROM cost_stats ORDER BY agent_id, skill_id"),
    )
    store.rebuild()  # live state == snapshot + replay of the logged events
    assert (
        rows(db, "SELECT * FROM competence ORDER BY agent_id, skill_id"),
        rows(db, "SELECT * FROM cost_stats ORDER BY agent_id, skill_id"),
    ) == live
    store.close()


def test_an_outcome_whose_skills_and_agent_went_is_applied_as_before(tmp_path: Path) -> None:
    """The one statement that reads the agent and the skills: all of a decision's skills deleted sends the outcome
    to its mode's record; an agent missing from the live tables (a replayed event) changes nothing."""
    db = tmp_path / "h.db"
    store = HandbookStore(db)
    store.create_version(DOCUMENT, source="import")
    handbook = Handbook(store)
    decision = handbook.route(
        RouteRequest(text="write sql", mode="code", skills=[SkillDemand(skill_id="code.sql", weight=1.0)])
    )
    handbook.delete_skill("code.sql")
    result = handbook.record(OutcomeReport(decision_id=decision.decision_id, reward=1.0, cost_usd=0.001))
    assert [u.skill_id for u in result.updated] == ["@code"]
    assert result.note is not None and "code.sql" in result.note
    (row,) = rows(db, f"SELECT * FROM competence WHERE agent_id = '{decision.agent_id}' AND skill_id = '@code'")
    assert (row["alpha"], row["beta"]) == (2.0, 1.0)
    with store.write():  # an event of an agent the live tables lack (a replay after its deletion): no change
        effect = store._apply_event(
            "outcome",
            {"agent_id": "nobody", "skills": [["code.python", 1.0]], "reward": 1.0, "cost_usd": 0.5},
        )
    assert effect.competence == [] and effect.costs == []
    assert rows(db, "SELECT * FROM competence WHERE agent_id = 'nobody'") == []
    store.close()
