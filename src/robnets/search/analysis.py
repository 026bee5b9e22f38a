"""The paper's analyses over scored architectures: correlations, the convolution-placement comparison,
plots and the ranking table. Input: the per-architecture records the search writes (dicts with ``density``,
``clean``, ``adv``, ``gap``, ``fsp_deep``, ``convs_per_cell``, ``direct_convs_per_cell`` ...)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


BOOTSTRAP_SAMPLES = 2000


def _finite_pairs(*columns: list) -> list[tuple]:
    return [row for row in zip(*columns)
            if all(v is not None and math.isfinite(v) for v in row)]


# Statistics vectorized over resamples: every argument is (B, n), one resample per row; NaN where undefined.
def _pearson_v(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _kendall_v(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b (as scipy.stats.kendalltau computes it), over all pairs i < j."""
    out = np.empty(a.shape[0])
    upper = np.triu(np.ones((a.shape[1], a.shape[1]), dtype=bool), k=1)
    for start in range(0, a.shape[0], 128):  # chunks keep the (chunk, n, n) sign arrays small
        sa = np.sign(a[start:start + 128, :, None] - a[start:start + 128, None, :])[:, upper]
        sb = np.sign(b[start:start + 128, :, None] - b[start:start + 128, None, :])[:, upper]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + 128] = (sa * sb).sum(1) / np.sqrt((sa * sa).sum(1) * (sb * sb).sum(1))
    return out


def _residualize_v(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of x and y after a least-squares line on z (with intercept); NaN where z is constant."""
    zc = z - z.mean(axis=1, keepdims=True)
    var = (zc * zc).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(var > 0, var, np.nan)

        def residual(v: np.ndarray) -> np.ndarray:
            vc = v - v.mean(axis=1, keepdims=True)
            return vc - ((vc * zc).sum(1, keepdims=True) / var) * zc
        return residual(x), residual(y)


def _bootstrap_ci(statistic, rows: list[tuple], samples: int, seed: int) -> list[float] | None:  # noqa: ANN001
    """95 % percentile interval of a vectorized ``statistic(*columns)`` over ``samples`` resamples of the rows
    (seeded); None when most resamples are degenerate (a constant column)."""
    if samples <= 0 or len(rows) < 3:
        return None
    data = np.asarray(rows, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(rows), size=(samples, len(rows)))
    values = statistic(*(data[picks, k] for k in range(data.shape[1])))
    values = values[np.isfinite(values)]
    if len(values) < samples // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _point(statistic, rows: list[tuple]) -> float | None:  # noqa: ANN001
    data = np.asarray(rows, dtype=float)
    value = float(statistic(*(data[None, :, k] for k in range(data.shape[1])))[0])
    return value if math.isfinite(value) else None


def correlation(xs: list[float], ys: list[float], *, bootstrap: int = BOOTSTRAP_SAMPLES,
                seed: int = 0) -> dict[str, Any]:
    """Pearson r and Kendall tau of paired values, with p-values and bootstrap 95 % intervals (``*_ci``).

    Pairs with a missing or non-finite value are dropped (``n`` counts the rest); None where undefined (n < 3,
    a constant column)."""
    rows = _finite_pairs(xs, ys)
    out: dict[str, Any] = {"n": len(rows), "pearson": None, "pearson_p": None, "pearson_ci": None,
                           "kendall": None, "kendall_p": None, "kendall_ci": None}
    if len(rows) < 3 or _point(_pearson_v, rows) is None:
        return out
    a, b = zip(*rows)
    r, rp = stats.pearsonr(a, b)
    tau, tp = stats.kendalltau(a, b)
    out.update(pearson=float(r), pearson_p=float(rp), kendall=float(tau), kendall_p=float(tp),
               pearson_ci=_bootstrap_ci(_pearson_v, rows, bootstrap, seed),
               kendall_ci=_bootstrap_ci(_kendall_v, rows, bootstrap, seed))
    return out


def partial_correlation(xs: list[float], ys: list[float], control: list[float], *,
                        bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Correlation of x and y with ``control`` held fixed (both regressed on it), with bootstrap intervals
    that redo the regression in every resample. Used for convolution placement at a given convolution count."""
    rows = _finite_pairs(xs, ys, control)
    out: dict[str, Any] = {"n": len(rows), "pearson": None, "pearson_ci": None, "kendall": None, "kendall_ci": None}

    def partial(stat):  # noqa: ANN001, ANN202
        return lambda x, y, z: stat(*_residualize_v(x, y, z))

    if len(rows) < 4 or _point(partial(_pearson_v), rows) is None:
        return out
    out.update(pearson=_point(partial(_pearson_v), rows), kendall=_point(partial(_kendall_v), rows),
               pearson_ci=_bootstrap_ci(partial(_pearson_v), rows, bootstrap, seed),
               kendall_ci=_bootstrap_ci(partial(_kendall_v), rows, bootstrap, seed))
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values of a family of tests (None where a test was undefined): a result
    whose adjusted p is below 0.05 survives the correction for having made all of them."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, running = len(present), 0.0
    out: list[float | None] = [None] * len(pvalues)
    for k, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def kendall_standard_error(n: int) -> float:
    """Standard error of Kendall's tau under no association (n points): what a sample of n can resolve; a
    true tau of about 2.8 standard errors is found (95 % two-sided) four times in five."""
    return math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))


def fsp_filter_effect(fsp: list[float], adv: list[float], keep: float = 0.5, *,
                      bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """What the paper's FSP filter would have done: keep the ``keep`` fraction with the lowest inherited
    deep-cell FSP loss, and compare the kept and rejected candidates' adversarial accuracy after fine-tuning.

    ``difference`` = mean adv kept - mean adv rejected (positive: the filter keeps the more robust ones), with a
    bootstrap interval; ``top_quarter_kept`` = the fraction of the most robust quarter the filter keeps (chance:
    ``keep``)."""
    rows = _finite_pairs(fsp, adv)
    out: dict[str, Any] = {"n": len(rows), "keep": keep, "kept_mean_adv": None, "rejected_mean_adv": None,
                           "difference": None, "difference_ci": None, "top_quarter_kept": None}
    if len(rows) < 4:
        return out
    k = max(1, min(len(rows) - 1, math.ceil(keep * len(rows))))

    def difference(f: np.ndarray, a: np.ndarray) -> np.ndarray:
        ordered = np.take_along_axis(a, np.argsort(f, axis=1, kind="stable"), axis=1)
        return ordered[:, :k].mean(1) - ordered[:, k:].mean(1)

    ordered = sorted(rows)
    kept = {id(r) for r in ordered[:k]}
    top = sorted(rows, key=lambda r: -r[1])[:max(1, len(rows) // 4)]
    out.update(kept_mean_adv=sum(a for _, a in ordered[:k]) / k,
               rejected_mean_adv=sum(a for _, a in ordered[k:]) / (len(rows) - k),
               difference=_point(difference, rows), difference_ci=_bootstrap_ci(difference, rows, bootstrap, seed),
               top_quarter_kept=sum(id(r) in kept for r in top) / len(top))
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


def summarize(records: list[dict], *, fsp_keep: float | None = 0.5) -> dict[str, Any]:
    """All correlations the paper's findings rest on, over the scored records, with bootstrap intervals.

    Finding 1: density vs adversarial accuracy. Finding 2: convolutions vs adversarial accuracy, and
    convolutions on direct edges at a given convolution count (partial correlation; per budget as well).
    Finding 3: deep-cell FSP loss (after fine-tuning; and of the inherited weights, as the filter sees it) vs
    the clean-adversarial gap and vs adversarial accuracy, and what filtering by it would keep (``fsp_keep``;
    None when the records are what a real filter already kept)."""
    density = [r["density"] for r in records]
    adv = [r["adv"] for r in records]
    gap = [r["gap"] for r in records]
    convs = [r["convs_per_cell"] for r in records]
    direct = [r["direct_convs_per_cell"] for r in records]
    out: dict[str, Any] = {
        "n": len(records),
        "density_vs_adv": correlation(density, adv),
        "density_vs_clean": correlation(density, [r["clean"] for r in records]),
        "convs_vs_adv": correlation(convs, adv),
        "direct_convs_vs_adv": correlation(direct, adv),
        "direct_convs_vs_adv_given_convs": partial_correlation(direct, adv, convs),
        "conv_placement": conv_placement(records),
    }
    for kind in ("", "relative_"):  # the raw FSP loss, and the relative one (comparable across widths)
        key = f"fsp_{kind}deep"
        if any(r.get(key) is not None for r in records):
            fsp = [r.get(key) for r in records]
            out[f"{key}_vs_gap"] = correlation(fsp, gap)
            out[f"{key}_vs_adv"] = correlation(fsp, adv)
            out[f"{key}_vs_gap_given_density"] = partial_correlation(fsp, gap, density)
            per_cell = f"fsp_{kind}".rstrip("_")
            n_cells = max(len(r.get(per_cell) or []) for r in records)
            out[f"{per_cell}_per_cell_vs_gap"] = [
                correlation([(r.get(per_cell) or [None] * n_cells)[i] for r in records], gap, bootstrap=0)["kendall"]
                for i in range(n_cells)]
        key = f"fsp_inherited_{kind}deep"
        if any(r.get(key) is not None for r in records):
            inherited = [r.get(key) for r in records]
            out[f"{key}_vs_gap"] = correlation(inherited, gap)
            out[f"{key}_vs_adv"] = correlation(inherited, adv)
            out[f"{key}_vs_adv_given_density"] = partial_correlation(inherited, adv, density)
            if fsp_keep is not None:  # the filter ranks the relative loss where it was measured
                out["fsp_filter"] = {**fsp_filter_effect(inherited, adv, keep=fsp_keep), "measure": key}
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


def _ci(interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def describe(c: dict[str, Any]) -> str:
    """One line for a correlation: Kendall tau and Pearson r with their intervals, and n."""
    if c.get("kendall") is None:
        return f"undefined (n={c['n']}: too few points or a constant column)"
    return (f"Kendall tau {c['kendall']:.2f} {_ci(c.get('kendall_ci'))}, Pearson r {c['pearson']:.2f} "
            f"{_ci(c.get('pearson_ci'))}, n={c['n']}")


SUMMARY_ROWS = (("density_vs_adv", "density vs adversarial acc"), ("density_vs_clean", "density vs clean acc"),
                ("convs_vs_adv", "convolutions vs adversarial acc"),
                ("direct_convs_vs_adv", "direct-edge convolutions vs adversarial acc"),
                ("direct_convs_vs_adv_given_convs", "direct-edge convolutions vs adversarial acc, at equal convolutions"),
                ("fsp_deep_vs_gap", "deep-cell FSP loss vs clean-adv gap"),
                ("fsp_deep_vs_adv", "deep-cell FSP loss vs adversarial acc"),
                ("fsp_deep_vs_gap_given_density", "deep-cell FSP loss vs clean-adv gap, at equal density"),
                ("fsp_inherited_deep_vs_gap", "inherited deep-cell FSP loss vs clean-adv gap"),
                ("fsp_inherited_deep_vs_adv", "inherited deep-cell FSP loss vs adversarial acc"),
                ("fsp_inherited_deep_vs_adv_given_density", "inherited deep-cell FSP loss vs adversarial acc, at equal density"),
                ("fsp_relative_deep_vs_gap", "deep-cell relative FSP loss vs clean-adv gap"),
                ("fsp_relative_deep_vs_adv", "deep-cell relative FSP loss vs adversarial acc"),
                ("fsp_relative_deep_vs_gap_given_density", "deep-cell relative FSP loss vs clean-adv gap, at equal density"),
                ("fsp_inherited_relative_deep_vs_gap", "inherited deep-cell relative FSP loss vs clean-adv gap"),
                ("fsp_inherited_relative_deep_vs_adv", "inherited deep-cell relative FSP loss vs adversarial acc"),
                ("fsp_inherited_relative_deep_vs_adv_given_density",
                 "inherited deep-cell relative FSP loss vs adversarial acc, at equal density"))


def summary_text(summary: dict[str, Any]) -> str:
    """Markdown table of the correlations (bootstrap 95 % intervals in brackets) and the FSP filter's effect."""
    lines = ["| relation | n | Pearson r [95 % CI] | Kendall tau [95 % CI] | p (tau) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, label in SUMMARY_ROWS:
        c = summary.get(key)
        if c is None:
            continue
        lines.append(f"| {label} | {c['n']} | {_fmt(c['pearson'], 2)} {_ci(c.get('pearson_ci'))} | "
                     f"{_fmt(c['kendall'], 2)} {_ci(c.get('kendall_ci'))} | {_fmt(c.get('kendall_p'), 3)} |")
    f = summary.get("fsp_filter")
    if f and f["difference"] is not None:
        lines.append("")
        measure = "relative " if "relative" in f.get("measure", "") else ""
        lines.append(f"FSP filter (keep the {f['keep']:.0%} lowest inherited deep-cell {measure}FSP losses, n={f['n']}): kept "
                     f"{f['kept_mean_adv']:.2f} % vs rejected {f['rejected_mean_adv']:.2f} % mean adversarial accuracy, "
                     f"difference {f['difference']:+.2f} pp {_ci(f['difference_ci'])}; it keeps "
                     f"{f['top_quarter_kept']:.0%} of the most robust quarter (chance: {f['keep']:.0%}).")
    return "\n".join(lines)


def plot(records: list[dict], summary: dict[str, Any], folder: str | Path) -> list[Path]:
    """PNG plots of the findings: density, convolution placement, FSP loss (after fine-tuning and inherited,
    the latter with the filter's cut), and the ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    written: list[Path] = []

    def title(base: str, c: dict) -> str:
        if c.get("kendall") is None:
            return f"{base} (n={c['n']})"
        return (f"{base}\nKendall tau={c['kendall']:.2f} {_ci(c.get('kendall_ci'))}, "
                f"Pearson r={c['pearson']:.2f} {_ci(c.get('pearson_ci'))}, n={c['n']}")

    def scatter(name: str, x: str, y: str, xlabel: str, ylabel: str, heading: str, key: str,
                color: str | None = None, cut: float | None = None) -> None:
        pts = [r for r in records if r.get(x) is not None and r.get(y) is not None]
        if not pts or key not in summary:
            return
        fig, ax = plt.subplots(figsize=(5.8, 4.4))
        if color:
            sc = ax.scatter([r[x] for r in pts], [r[y] for r in pts], c=[r[color] for r in pts], cmap="viridis",
                            s=22, alpha=0.85)
            fig.colorbar(sc, ax=ax, label="convolutions per cell")
        else:
            ax.scatter([r[x] for r in pts], [r[y] for r in pts], s=20, alpha=0.8)
        if cut is not None:
            ax.axvline(cut, color="tab:red", ls="--", lw=1, label="filter cut (kept: left)")
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title(heading, summary[key]), fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(folder / name)
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    scatter("density_vs_adv.png", "density", "adv", "architecture density D", "adversarial accuracy (%)",
            "Density vs robustness", "density_vs_adv")
    scatter("conv_placement.png", "direct_convs_per_cell", "adv", "convolutions on direct edges (per cell)",
            "adversarial accuracy (%)", "Direct-edge convolutions vs robustness (partial, at equal convolutions)",
            "direct_convs_vs_adv_given_convs", color="convs_per_cell")
    fsp_key = "fsp_relative_deep" if "fsp_relative_deep_vs_gap" in summary else "fsp_deep"
    scatter("fsp_vs_gap.png", fsp_key, "gap", f"deep-cell {'relative ' if 'relative' in fsp_key else ''}FSP loss "
            f"(clean vs adversarial)", "clean - adversarial accuracy (pp)", "FSP loss vs robustness gap",
            f"{fsp_key}_vs_gap")
    if "fsp_filter" in summary:
        measure = summary["fsp_filter"].get("measure", "fsp_inherited_deep")
        inherited = sorted(r[measure] for r in records if r.get(measure) is not None)
        keep = summary["fsp_filter"]["keep"]
        k = max(1, min(len(inherited) - 1, math.ceil(keep * len(inherited))))
        cut = (inherited[k - 1] + inherited[k]) / 2 if len(inherited) > 1 else None
        label = "relative " if "relative" in measure else ""
        scatter("fsp_filter.png", measure, "adv", f"inherited deep-cell {label}FSP loss (before fine-tuning)",
                "adversarial accuracy after fine-tuning (%)", "The FSP filter's view", f"{measure}_vs_adv", cut=cut)

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


def plot_noise_floor(floor: dict[str, Any], path: str | Path) -> Path:
    """Scatter of two scorings of the same candidates (fine-tuning seeds) with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = floor["adv_first"], floor["adv_second"]
    c = floor["adv"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(a, b, s=24)
    lo, hi = min(a + b) - 1, max(a + b) + 1
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    seeds = floor["finetune_seeds"]
    ax.set_xlabel(f"adversarial accuracy, fine-tuning seed {seeds[0]} (%)")
    ax.set_ylabel(f"adversarial accuracy, fine-tuning seed {seeds[1]} (%)")
    tau = "-" if c["kendall"] is None else f"{c['kendall']:.2f} {_ci(c.get('kendall_ci'))}"
    ax.set_title(f"Noise floor: Kendall tau={tau}, n={floor['n']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
