"""The paper's analyses over scored architectures: correlations, the convolution-placement comparison,
plots and the ranking table. Input: the per-architecture records the search writes (dicts with ``density``,
``clean``, ``adv``, ``gap``, ``fsp_deep``, ``convs_per_cell``, ``direct_convs_per_cell`` ...)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from scipy import stats


def correlation(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Pearson r and Kendall tau (with p-values) of paired values; None where undefined (n < 3, constant)."""
    pairs = [(x, y) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    out: dict[str, Any] = {"n": len(pairs), "pearson": None, "pearson_p": None, "kendall": None, "kendall_p": None}
    if len(pairs) < 3:
        return out
    a, b = zip(*pairs)
    if len(set(a)) < 2 or len(set(b)) < 2:
        return out
    r, rp = stats.pearsonr(a, b)
    tau, tp = stats.kendalltau(a, b)
    out.update(pearson=float(r), pearson_p=float(rp), kendall=float(tau), kendall_p=float(tp))
    return out


def conv_placement(records: list[dict]) -> list[dict[str, Any]]:
    """Per convolution budget: adversarial accuracy vs the number of convolutions on direct edges.

    Records are grouped by their (rounded) convolutions per cell; within a group, more convolutions on
    direct edges should mean higher adversarial accuracy (the paper's observation 2).
    """
    groups: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        groups[round(r["convs_per_cell"], 1)].append(r)
    rows = []
    for budget in sorted(groups):
        group = groups[budget]
        corr = correlation([r["direct_convs_per_cell"] for r in group], [r["adv"] for r in group])
        median = sorted(r["direct_convs_per_cell"] for r in group)[len(group) // 2]
        more = [r["adv"] for r in group if r["direct_convs_per_cell"] >= median]
        fewer = [r["adv"] for r in group if r["direct_convs_per_cell"] < median]
        rows.append({"convs_per_cell": budget, "n": len(group), "kendall_direct_vs_adv": corr["kendall"],
                     "mean_adv_more_direct": sum(more) / len(more) if more else None,
                     "mean_adv_fewer_direct": sum(fewer) / len(fewer) if fewer else None})
    return rows


def summarize(records: list[dict]) -> dict[str, Any]:
    """All correlations the paper reports, over the scored records."""
    density = [r["density"] for r in records]
    adv = [r["adv"] for r in records]
    gap = [r["gap"] for r in records]
    out: dict[str, Any] = {
        "n": len(records),
        "density_vs_adv": correlation(density, adv),
        "density_vs_clean": correlation(density, [r["clean"] for r in records]),
        "convs_vs_adv": correlation([r["convs_per_cell"] for r in records], adv),
        "direct_convs_vs_adv": correlation([r["direct_convs_per_cell"] for r in records], adv),
        "conv_placement": conv_placement(records),
    }
    if any(r.get("fsp_deep") is not None for r in records):
        out["fsp_deep_vs_gap"] = correlation([r.get("fsp_deep") for r in records], gap)
        out["fsp_deep_vs_adv"] = correlation([r.get("fsp_deep") for r in records], adv)
        n_cells = max(len(r.get("fsp") or []) for r in records)
        out["fsp_per_cell_vs_gap"] = [
            correlation([(r.get("fsp") or [None] * n_cells)[i] for r in records], gap)["kendall"]
            for i in range(n_cells)]
    return out


def rank(records: list[dict]) -> list[dict]:
    """Records best first: adversarial accuracy, then clean accuracy, then the canonical string (ties)."""
    return sorted(records, key=lambda r: (-r["adv"], -r["clean"], r["genotype"]))


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ranking_table(records: list[dict], top: int = 20) -> str:
    """Markdown table of the best ``top`` architectures."""
    lines = ["| rank | clean % | adv % | gap | density | convs/cell | direct convs | deep FSP | genotype |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for i, r in enumerate(rank(records)[:top], 1):
        g = r["genotype"] if len(r["genotype"]) <= 70 else r["genotype"][:67] + "..."
        lines.append(f"| {i} | {r['clean']:.1f} | {r['adv']:.1f} | {r['gap']:.1f} | {r['density']:.3f} | "
                     f"{r['convs_per_cell']:.1f} | {r['direct_convs_per_cell']:.1f} | {_fmt(r.get('fsp_deep'), 4)} "
                     f"| `{g}` |")
    return "\n".join(lines)


def summary_text(summary: dict[str, Any]) -> str:
    """Human-readable correlations."""
    def line(name: str, c: dict) -> str:
        return (f"| {name} | {c['n']} | {_fmt(c['pearson'])} | {_fmt(c['pearson_p'], 3)} | {_fmt(c['kendall'])} | "
                f"{_fmt(c['kendall_p'], 3)} |")

    lines = ["| relation | n | Pearson r | p | Kendall tau | p |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, label in (("density_vs_adv", "density vs adversarial acc"), ("density_vs_clean", "density vs clean acc"),
                       ("convs_vs_adv", "convolutions vs adversarial acc"),
                       ("direct_convs_vs_adv", "direct-edge convolutions vs adversarial acc"),
                       ("fsp_deep_vs_gap", "deep-cell FSP loss vs clean-adv gap"),
                       ("fsp_deep_vs_adv", "deep-cell FSP loss vs adversarial acc")):
        if key in summary:
            lines.append(line(label, summary[key]))
    return "\n".join(lines)


def plot(records: list[dict], summary: dict[str, Any], folder: str | Path) -> list[Path]:
    """PNG plots: density vs adversarial accuracy, deep-cell FSP loss vs gap, the ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    written = []

    def title(base: str, c: dict) -> str:
        if c.get("pearson") is None:
            return f"{base} (n={c['n']})"
        return f"{base}\nPearson r={c['pearson']:.2f}, Kendall tau={c['kendall']:.2f} (n={c['n']})"

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter([r["density"] for r in records], [r["adv"] for r in records], s=18, alpha=0.8)
    ax.set_xlabel("architecture density D")
    ax.set_ylabel("adversarial accuracy (%)")
    ax.set_title(title("Density vs robustness", summary["density_vs_adv"]), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(folder / "density_vs_adv.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    if "fsp_deep_vs_gap" in summary:
        pts = [(r["fsp_deep"], r["gap"]) for r in records if r.get("fsp_deep") is not None]
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.8, color="tab:red")
        ax.set_xlabel("deep-cell FSP loss (clean vs adversarial)")
        ax.set_ylabel("clean - adversarial accuracy (pp)")
        ax.set_title(title("FSP loss vs robustness gap", summary["fsp_deep_vs_gap"]), fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(folder / "fsp_vs_gap.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    ranked = rank(records)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = list(range(1, len(ranked) + 1))
    ax.plot(xs, [r["adv"] for r in ranked], marker="o", ms=3, label="adversarial")
    ax.plot(xs, [r["clean"] for r in ranked], marker="o", ms=3, alpha=0.7, label="clean")
    ax.set_xlabel("rank (by adversarial accuracy)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Ranking of {len(ranked)} sampled architectures", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(folder / "ranking.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
