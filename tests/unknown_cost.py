"""A handbook where the agent chosen has no price: what the budget tests of unknown costs route on."""

from __future__ import annotations

from skillorchestra.handbook.models import Agent, HandbookDocument, Skill


def unknown_cost_document() -> HandbookDocument:
    """'unknown' is chosen, charged the dearest known cost of a long step: 'known' costs $0.001 a call on 100-token
    steps at $10/Mtok input, so a 32,000-character step costs 0.001 + 7,900 * 1e-5 = $0.08 (c_ref stays $0.001)."""
    return HandbookDocument(
        skills=[Skill(id="s", mode="m")],
        agents=[Agent(id="known", input_per_mtok=10.0, output_per_mtok=10.0), Agent(id="unknown")],
        competence=[
            {"agent_id": "unknown", "skill_id": "s", "alpha": 50.0, "beta": 1.0},
            {"agent_id": "known", "skill_id": "s", "alpha": 1.0, "beta": 50.0},
        ],
        cost=[
            {
                "agent_id": "known",
                "skill_id": "s",
                "n": 10.0,
                "mean_cost_usd": 0.001,
                "mean_step_tokens": 100.0,
                "n_step_tokens": 10.0,
            }
        ],
    )
