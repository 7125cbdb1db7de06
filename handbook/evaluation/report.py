"""The readable side of the eval: plain-text tables of the JSON result (stdout, and bench/eval_tables.py)."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


LAMBDA_WIDTH = 7  # the table's lambda column


def _lam(value: float | None) -> str:
    """Grid lambdas with two decimals; a bisected operating lambda with the digits that tell it apart, at most 4
    significant ones and never wider than the column (0.09375 fits; 0.0078125 shows as 0.00781)."""
    if value is None:
        return "-"
    if round(value, 2) == value and len(f"{value:.2f}") <= LAMBDA_WIDTH:
        return f"{value:.2f}"
    for digits in (4, 3, 2, 1):
        text = f"{value:.{digits}g}"
        if len(text) <= LAMBDA_WIDTH:
            return text
    return text


def _usd(value: Any) -> str:
    return "-" if value is None else f"${value:.3g}"


def rows_table(result: dict[str, Any]) -> str:
    """One line per policy and lambda: accuracy, cost (absolute and vs best-single), shares, collapse."""
    rows = result["rows"]
    best = next((r for r in rows if r["policy"] == "best-single"), None)
    best_cost = best["avg_cost"] if best else None
    operating = result.get("operating_point", {}).get("lambda")
    w = LAMBDA_WIDTH
    header = f"{'policy':<24} {'lambda':>{w}} {'acc':>6} {'avg_cost':>10} {'%best$':>7} {'gap':>6} {'H bits':>6} "
    header += f"{'exp%':>5}  top agent (share)"
    lines = [header, "-" * len(header)]
    for r in rows:
        top, share = max(r["agent_share"].items(), key=lambda item: item[1]) if r["agent_share"] else ("-", 0.0)
        ratio = f"{100 * r['avg_cost'] / best_cost:.0f}%" if best_cost and r["avg_cost"] is not None else "-"
        mark = " *" if r["policy"] == "skillorchestra" and r["lambda"] == operating else ""
        lines.append(
            f"{r['policy'] + mark:<24} {_lam(r['lambda']):>{w}} {_f(r['accuracy']):>6} {_usd(r['avg_cost']):>10} "
            f"{ratio:>7} {_f(r['oracle_gap_closed'], 2):>6} {_f(r['entropy_bits'], 2):>6} "
            f"{100 * r['expensive_share']:>4.0f}%  {top} ({share:.0%})"
        )
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    """The table plus the dataset line, the operating point, two-agent, online, episodes and learning."""
    ds = result["dataset"]
    dropped = f"{ds['dropped_seen_in_train']} dropped as seen in train"
    if "dropped_unjudged" in ds:
        dropped += f", {ds['dropped_unjudged']} as judged for no agent"
    lines = [
        f"dataset: {ds['train']} train, {ds['test']} test ({dropped}), "
        f"{len(ds['agents'])} agent{'' if len(ds['agents']) == 1 else 's'}, cost basis {cost_basis_text(ds)}, "
        f"c_ref {_usd(ds.get('c_ref'))}",
    ]
    unknown = ds.get("unknown_cost_agents") or []
    if unknown:
        lines.append(
            f"unknown cost (no price in --agents, no cost_usd in the data): {', '.join(unknown)} charged c_ref "
            f"{_usd(ds.get('c_ref'))} per call"
        )
    test_only = ds.get("test_only_agents") or []
    if test_only:
        lines.append(f"not compared (judged only in --test, nothing in --train to learn from): {', '.join(test_only)}")
    lines.append(rows_table(result))
    op = result.get("operating_point", {})
    lines.append(f"operating point (* above): lambda {op.get('lambda')} ({op.get('rule', 'chosen on validation')})")
    if "oracle_best_score_accuracy" in ds:
        lines.append(
            "oracle: per task the cheapest agent scoring >= 0.5 (else the best-scoring one); the mean best score "
            f"over agents is {_f(ds['oracle_best_score_accuracy'])}, the ceiling of `gap` (the same on 0/1 scores)"
        )
    if "two_agent" in result:
        lines.append(
            "two-agent (RouteLLM): "
            + "; ".join(
                f"{name} APGR {_f(v['apgr'])} CPT(50%) {_f(v['cpt50'])}"
                for name, v in result["two_agent"].items()
                if "why" not in v  # a policy with nothing to sweep: named in the JSON only
            )
        )
    for entry in result.get("online", []):
        lines.append(
            f"online {entry['policy']} ({entry['start']} start, lambda {entry['lambda']}): accuracy "
            f"{_f(entry['accuracy'])}, cumulative regret {_f(entry['cumulative_regret'], 1)}"
        )
    episodes = result.get("episodes", {})
    rule = result.get("episodes_detail", {}).get("rule", "all steps must succeed")  # QA: said 3-5 for 3
    if any(v.get("episodes") for v in episodes.values()):
        lines.append(
            f"episodes ({rule}): "
            + "; ".join(f"{name} {_f(v['accuracy'])} at {_usd(v['avg_cost'])}" for name, v in episodes.items())
        )
    elif episodes:
        lines.append(f"episodes: {rule}")
    learning = result.get("learning", {})
    lines.append(
        f"learning: {_f(learning.get('seconds'), 1)} s, {learning.get('llm_calls')} LLM calls, "
        f"{_usd(learning.get('usd'))}, {learning.get('skills', '?')} skills learned"
        + (", with a length effect" if learning.get("length_effect") else "")
    )
    diag = result.get("diagnostics", {})
    if diag:
        vs = diag["curve_vs_knn"]
        col = diag["collapse"]
        lines.append(
            f"curve vs kNN: our envelope at or above {vs['share_at_or_above']:.0%} of {vs['points_compared']} kNN "
            f"points (mean margin {vs['mean_margin']:+.3f}, worst {vs['min_margin']:+.3f}); "
            f"top agent at operating point {col['top_agent']} {col['top_share']:.0%}"
        )
    return "\n".join(lines)


def family_table(result: dict[str, Any]) -> str:
    """Per task family at the operating point: our accuracy and main agent vs kNN's, and the family's best."""
    families = result.get("diagnostics", {}).get("per_family_at_operating_point", {})
    header = f"{'family':<24} {'n':>4} {'ours':>6} {'kNN':>6} {'best':>6}  our top agent / kNN top agent / best agent"
    lines = [header, "-" * len(header)]
    for name, e in families.items():
        ours, knn = e["skillorchestra"], e["knn"]
        lines.append(
            f"{name[:24]:<24} {e['n']:>4} {_f(ours['accuracy']):>6} {_f(knn['accuracy']):>6} "
            f"{_f(e['best_agent_accuracy']):>6}  {ours['top_agent']} ({ours['top_share']:.0%}) / "
            f"{knn['top_agent']} ({knn['top_share']:.0%}) / {e['best_agent']}"
        )
    return "\n".join(lines)


def cost_basis_text(ds: dict[str, Any]) -> str:
    """'estimated', with the share of costs that were recorded when some were."""
    share = ds.get("recorded_cost_share") or 0.0
    if ds["cost_basis"] != "estimated" or share <= 0:
        return str(ds["cost_basis"])
    shown = "over 99%" if share > 0.99 else "under 1%" if share < 0.01 else f"{share:.0%}"  # never "100%" or "0%"
    return f"estimated ({shown} of costs recorded)"
