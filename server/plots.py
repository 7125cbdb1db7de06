"""The eval's two pictures (matplotlib, the optional `plot` extra, imported only when asked for).

pareto.png: the accuracy/cost plane, each swept policy as a curve over lambda, the other policies and every
single agent as points, our operating point starred. shares.png: each policy's call shares per agent at its
operating point, so a collapse onto one expensive agent is visible at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skillorchestra.handbook.errors import InvalidInput

LABEL_BOX_PX = (28.0, 10.0)  # a lambda label is left out when its point is this close (x, y pixels) to a labelled one
CURVES = {"skillorchestra": ("tab:blue", (3, 4)), "knn": ("tab:orange", (3, -10))}  # colour, lambda label offset
POINTS = {
    "skillorchestra-thompson": ("tab:cyan", "D"),
    "paper-rule": ("tab:purple", "s"),
    "best-single": ("black", "^"),
    "cheapest": ("tab:brown", "v"),
    "random": ("tab:gray", "x"),
    "oracle": ("tab:green", "*"),
}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput(
            "--plot-dir", "matplotlib", "matplotlib installed (pip install 'skillorchestra-mcp[plot]')"
        ) from None
    return plt


def write_plots(result: dict[str, Any], out_dir: Path, label: str = "") -> list[Path]:
    """Write DIR/pareto.png and DIR/shares.png (titles prefixed by `label`, e.g. the dataset); returns paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "pareto.png", out_dir / "shares.png"]
    prefix = f"{label}: " if label else ""
    _pareto(plt, result, paths[0], prefix)
    _shares(plt, result, paths[1], prefix)
    return paths


def _lambda_labels(ax: Any, labels: list[tuple[str, float, float, str, tuple[int, int]]]) -> None:
    """Label curve points with their lambda, skipping a label whose point sits within a label's width of one already
    labelled (cheap lambdas crowd into one corner, where overlapping digits read as nonsense)."""
    ax.autoscale_view()
    kept: list[tuple[float, float]] = []
    for text, cost, acc, color, offset in labels:
        x, y = ax.transData.transform((cost, acc))
        if any(abs(x - kx) < LABEL_BOX_PX[0] and abs(y - ky) < LABEL_BOX_PX[1] for kx, ky in kept):
            continue
        kept.append((x, y))
        ax.annotate(text, (cost, acc), fontsize=6, color=color, xytext=offset, textcoords="offset points")


def _agent_labels(ax: Any, agents: list[dict[str, Any]]) -> None:
    """Name each single agent beside its point: below right, clear of a best-single or cheapest marker on the same
    point, or below left near the right edge, where the name would run under the legend."""
    to_axes = ax.transAxes.inverted()
    for agent in agents:
        point = (agent["avg_cost"], agent["accuracy"])
        right_edge = to_axes.transform(ax.transData.transform(point))[0] > 0.7
        ax.annotate(
            agent["agent"],
            point,
            fontsize=6,
            color="dimgray",
            xytext=(-6, -10) if right_edge else (6, -10),
            ha="right" if right_edge else "left",
            textcoords="offset points",
            zorder=6,
        )


def _pareto(plt: Any, result: dict[str, Any], path: Path, prefix: str) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=110)
    rows = result["rows"]
    operating = result.get("operating_point", {}).get("lambda")
    # an agent without judged test tasks or a known cost has no point
    placed = [a for a in result.get("single_agents", []) if a["accuracy"] is not None and a["avg_cost"] is not None]
    for agent in placed:
        ax.scatter(agent["avg_cost"], agent["accuracy"], color="lightgray", edgecolor="gray", s=30, zorder=2)
    labels: list[tuple[str, float, float, str, tuple[int, int]]] = []
    for policy, (color, offset) in CURVES.items():
        points = sorted((r["lambda"], r["avg_cost"], r["accuracy"]) for r in rows if r["policy"] == policy)
        if not points:
            continue
        ax.plot([c for _, c, _ in points], [a for _, _, a in points], "-o", color=color, ms=4, label=policy, zorder=3)
        labels += [(f"{lam:g}", cost, acc, color, offset) for lam, cost, acc in points]
    for r in rows:
        if r["policy"] == "skillorchestra" and r["lambda"] == operating:
            ax.scatter(
                r["avg_cost"],
                r["accuracy"],
                marker="*",
                s=260,
                color="gold",
                edgecolor="tab:blue",
                zorder=5,
                label=f"operating point (lambda {operating:g})",
            )
        elif r["policy"] in POINTS and r["avg_cost"] is not None:
            color, marker = POINTS[r["policy"]]
            ax.scatter(r["avg_cost"], r["accuracy"], marker=marker, s=55, color=color, zorder=4, label=r["policy"])
    costs = [r["avg_cost"] for r in rows if r["avg_cost"]]
    if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    _lambda_labels(ax, labels)
    _agent_labels(ax, placed)
    ds = result["dataset"]
    ax.set_xlabel(f"mean cost per task (USD, {ds['cost_basis']})")
    ax.set_ylabel("accuracy (mean score)")
    ax.set_title(f"{prefix}accuracy vs cost on {ds['test']} unseen test tasks ({len(ds['agents'])} agents)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.text(
        1.01,
        0.0,
        "numbers on curves: lambda\ngray: single agents",
        transform=ax.transAxes,
        fontsize=7,
        color="dimgray",
        va="bottom",
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _operating_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each policy once: swept policies at the operating lambda, the others as they are."""
    operating = result.get("operating_point", {}).get("lambda")
    chosen: dict[str, dict[str, Any]] = {}
    for r in result["rows"]:
        if r["lambda"] is None or r["lambda"] == operating:
            chosen.setdefault(r["policy"], r)
    return list(chosen.values())


def _shares(plt: Any, result: dict[str, Any], path: Path, prefix: str) -> None:
    rows = _operating_rows(result)
    agents = result["dataset"]["agents"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 2.2), dpi=110)
    cmap = plt.get_cmap("tab10" if len(agents) <= 10 else "tab20")
    labels = [r["policy"] + (f" (lambda {r['lambda']:g})" if r["lambda"] is not None else "") for r in rows]
    left = [0.0] * len(rows)
    for k, agent in enumerate(agents):
        widths = [r["agent_share"].get(agent, 0.0) for r in rows]
        ax.barh(labels, widths, left=left, color=cmap(k % cmap.N), label=agent, edgecolor="white", linewidth=0.5)
        for i, width in enumerate(widths):
            if width >= 0.08:
                ax.text(left[i] + width / 2, i, f"{width:.0%}", ha="center", va="center", fontsize=6, color="white")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of calls")
    ax.set_title(f"{prefix}call shares per agent at each policy's operating point")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
