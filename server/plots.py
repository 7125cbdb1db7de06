"""The eval's two pictures (matplotlib, the optional `plot` extra, imported only when asked for).

pareto.png: the accuracy/cost plane, each swept policy as a curve over lambda, the other policies and every
single agent as points, our operating point starred. shares.png: each policy's call shares per agent at its
operating point, so a collapse onto one expensive agent is visible at a glance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from skillorchestra.handbook.errors import InvalidInput
from skillorchestra.handbook.evaluation.report import cost_basis_text

OPERATING_LABEL_OFFSET = (-9, 8)  # points: above left of the star, where the curves rarely run
MINOR_LABEL_DECADES = 3.0  # a log cost axis labels its 2x and 5x ticks when the costs span at most this many decades
LEGEND_FONT = 8  # shares.png's legend (it was 6 pt)
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


PLOT_EXTRA = "pip install 'skillorchestra-mcp[plot]'"


def require_matplotlib(out_dir: Path) -> None:
    """Refuse --plot-dir at once when matplotlib does not import, before a run that would end unable to draw."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidInput(
            "--plot-dir", str(out_dir), f"matplotlib to draw the plots, which is not installed ({PLOT_EXTRA})"
        ) from None


def _pyplot(out_dir: Path) -> Any:
    require_matplotlib(out_dir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: dict[str, Any], out_dir: Path, label: str = "") -> list[Path]:
    """Write DIR/pareto.png and DIR/shares.png (titles prefixed by `label`, e.g. the dataset); returns paths."""
    plt = _pyplot(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "pareto.png", out_dir / "shares.png"]
    prefix = f"{label}: " if label else ""
    for path, draw in zip(paths, (pareto_figure, shares_figure), strict=True):
        fig = draw(plt, result, prefix)
        fig.savefig(path)
        plt.close(fig)
    return paths


def _lambda_labels(
    ax: Any, labels: list[tuple[str, float, float, str, tuple[int, int]]], taken: list[tuple[float, float]]
) -> None:
    """Label curve points with their lambda, skipping a label whose point sits within a label's width of one already
    labelled or of a `taken` (cost, accuracy) point (cheap lambdas crowd into one corner, where overlapping digits
    read as nonsense)."""
    ax.autoscale_view()
    kept = [tuple(ax.transData.transform(point)) for point in taken]
    for text, cost, acc, color, offset in labels:
        x, y = ax.transData.transform((cost, acc))
        if any(abs(x - kx) < LABEL_BOX_PX[0] and abs(y - ky) < LABEL_BOX_PX[1] for kx, ky in kept):
            continue
        kept.append((x, y))
        ax.annotate(text, (cost, acc), fontsize=6, color=color, xytext=offset, textcoords="offset points")


def agent_label(agent: dict[str, Any]) -> str:
    """A single agent's name, with its coverage when it was judged on fewer than all the test tasks the rows are
    scored on (sparse data): its point then stands for those tasks only and may sit above the oracle's."""
    n, of = agent.get("n"), agent.get("of")
    if n is None or of is None or n >= of:
        return str(agent["agent"])
    return f"{agent['agent']} ({n}/{of} tasks)"


def _agent_labels(ax: Any, agents: list[dict[str, Any]]) -> None:
    """Name each single agent beside its point: below right, clear of a best-single or cheapest marker on the same
    point, or below left near the right edge, where the name would run under the legend."""
    to_axes = ax.transAxes.inverted()
    for agent in agents:
        point = (agent["avg_cost"], agent["accuracy"])
        right_edge = to_axes.transform(ax.transData.transform(point))[0] > 0.7
        ax.annotate(
            agent_label(agent),
            point,
            fontsize=6,
            color="dimgray",
            xytext=(-6, -10) if right_edge else (6, -10),
            ha="right" if right_edge else "left",
            textcoords="offset points",
            zorder=6,
        )


def dollars(value: float, _position: object = None) -> str:
    """A cost tick as plain dollars with at most 3 significant digits ($0.00005, $0.0015), never 10^-3."""
    if value <= 0:
        return "$0"
    return "$" + np.format_float_positional(float(f"{value:.3g}"), trim="-")


def _minor_dollars(value: float, _position: object = None) -> str:
    """Log axis minor ticks: label 2x and 5x each power of ten, so a span of one or two decades shows amounts."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return dollars(value) if any(abs(mantissa - m) < 1e-6 for m in (2.0, 5.0)) else ""


def _cost_axis(ax: Any, costs: list[float]) -> None:
    """Log scale when costs span more than 20x (then minor ticks labelled when at most 3 decades); ticks in USD."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
        ax.set_xscale("log")
        few_decades = math.log10(max(costs) / min(costs)) <= MINOR_LABEL_DECADES
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_dollars) if few_decades else NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(dollars))
    ax.tick_params(axis="x", which="both", labelsize=9)  # minor labels as large as the major ones


def _operating_label(ax: Any, row: dict[str, Any]) -> None:
    """The operating lambda above left of its star, boxed and on top: at its curve offset it sat under the
    star and under the Thompson marker, which is usually beside it (same lambda, similar cost)."""
    ax.annotate(
        f"{row['lambda']:g}",
        (row["avg_cost"], row["accuracy"]),
        fontsize=7,
        fontweight="bold",
        color=CURVES["skillorchestra"][0],
        xytext=OPERATING_LABEL_OFFSET,
        textcoords="offset points",
        ha="right",
        va="bottom",
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        zorder=7,
    )


def pareto_figure(plt: Any, result: dict[str, Any], prefix: str = "") -> Any:
    """The accuracy/cost plane (the caller saves and closes the figure)."""
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
        labels += [
            (f"{lam:g}", cost, acc, color, offset)
            for lam, cost, acc in points
            if not (policy == "skillorchestra" and lam == operating)  # labelled apart, clear of the markers
        ]
    op_row = None
    for r in rows:
        if r["policy"] == "skillorchestra" and r["lambda"] == operating:
            op_row = r
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
    _cost_axis(ax, [r["avg_cost"] for r in rows if r["avg_cost"]])
    taken = [] if op_row is None else [(op_row["avg_cost"], op_row["accuracy"])]
    _lambda_labels(ax, labels, taken)
    if op_row is not None:
        _operating_label(ax, op_row)
    _agent_labels(ax, placed)
    ds = result["dataset"]
    ax.set_xlabel(f"mean cost per task (USD, {cost_basis_text(ds)})")
    ax.set_ylabel("accuracy (mean score)")
    n_agents = len(ds["agents"])
    ax.set_title(
        f"{prefix}accuracy vs cost on {ds['test']} unseen test tasks ({n_agents} agent{'' if n_agents == 1 else 's'})"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.text(
        1.01,
        0.0,
        "numbers on curves: lambda\ngray: single agents"
        + ("\n(n/N tasks: judged on n of them)" if any(agent_label(a) != a["agent"] for a in placed) else ""),
        transform=ax.transAxes,
        fontsize=7,
        color="dimgray",
        va="bottom",
    )
    fig.tight_layout()
    return fig


def _operating_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each policy once: swept policies at the operating lambda, the others as they are."""
    operating = result.get("operating_point", {}).get("lambda")
    chosen: dict[str, dict[str, Any]] = {}
    for r in result["rows"]:
        if r["lambda"] is None or r["lambda"] == operating:
            chosen.setdefault(r["policy"], r)
    return list(chosen.values())


def shares_figure(plt: Any, result: dict[str, Any], prefix: str = "") -> Any:
    """Stacked bars (the caller saves and closes the figure). The title is over the whole figure (over the axes it
    ran past the right edge, the policy names taking the left) and the legend right under the axes in readable
    type: constrained layout places both."""
    rows = _operating_rows(result)
    agents = result["dataset"]["agents"]
    columns = min(3, len(agents))
    legend_lines = -(-len(agents) // columns)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6 + 0.22 * legend_lines), dpi=110, layout="constrained")
    cmap = plt.get_cmap("tab10" if len(agents) <= 10 else "tab20")
    labels = [r["policy"] + (f" (lambda {r['lambda']:g})" if r["lambda"] is not None else "") for r in rows]
    left = [0.0] * len(rows)
    for k, agent in enumerate(agents):
        widths = [r["agent_share"].get(agent, 0.0) for r in rows]
        ax.barh(labels, widths, left=left, color=cmap(k % cmap.N), label=agent, edgecolor="white", linewidth=0.5)
        for i, width in enumerate(widths):
            if width >= 0.08:
                ax.text(left[i] + width / 2, i, f"{width:.0%}", ha="center", va="center", fontsize=7, color="white")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of calls")
    fig.suptitle(f"{prefix}call shares per agent at each policy's operating point")
    fig.legend(fontsize=LEGEND_FONT, loc="outside lower center", ncol=columns, frameon=False)
    return fig
