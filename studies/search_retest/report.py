"""Collect the re-test's numbers and plots for the docs: writes docs/search-retest/numbers.md and copies the
plots it cites. Reads what the run folders hold; parts not run yet are left out (and said so).

Usage (from the repository root): python studies/search_retest/report.py
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from robnets.search.analysis import SUMMARY_ROWS, _ci, _fmt

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "studies" / "search_retest" / "runs"
OUT = ROOT / "docs" / "search-retest"
PLOTS = {"cell": ("density_vs_adv.png", "conv_placement.png", "ranking.png", "noise_floor.png"),
         "free": ("fsp_vs_gap.png", "fsp_filter.png", "ranking.png")}


def _load(path: Path):  # noqa: ANN202
    return json.loads(path.read_text()) if path.is_file() else None


def correlations(name: str) -> list[str]:
    summary = _load(RUNS / name / "analysis.json")
    rows = _load(RUNS / name / "architectures.json") or []
    if summary is None:
        return [f"*{name}: not finished*", ""]
    scored = [r for r in rows if r.get("status") == "scored"]
    adv = [r["adv"] for r in scored]
    lines = [f"### {name} search: {summary['n']} scored architectures", "",
             f"Adversarial accuracy (PGD-10, 500 held-out training images): median {statistics.median(adv):.1f} %, "
             f"range {min(adv):.1f}-{max(adv):.1f} %; clean: median "
             f"{statistics.median(r['clean'] for r in scored):.1f} %.", "",
             "| relation | n | Pearson r [95 % CI] | Kendall tau [95 % CI] | p (tau) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, label in SUMMARY_ROWS:
        c = summary.get(key)
        if c is not None:
            lines.append(f"| {label} | {c['n']} | {_fmt(c['pearson'], 2)} {_ci(c.get('pearson_ci'))} | "
                         f"{_fmt(c['kendall'], 2)} {_ci(c.get('kendall_ci'))} | {_fmt(c.get('kendall_p'), 3)} |")
    f = summary.get("fsp_filter")
    if f and f.get("difference") is not None:
        lines += ["", f"FSP filter, had it kept the {f['keep']:.0%} lowest inherited deep-cell losses (n={f['n']}): "
                      f"kept {f['kept_mean_adv']:.2f} % vs rejected {f['rejected_mean_adv']:.2f} % mean adversarial "
                      f"accuracy, difference {f['difference']:+.2f} pp {_ci(f['difference_ci'])}; it would keep "
                      f"{f['top_quarter_kept']:.0%} of the most robust quarter (chance {f['keep']:.0%})."]
    placement = summary.get("conv_placement") or []
    if placement:
        lines += ["", "Per convolution count (convolutions per cell): Kendall tau of direct-edge convolutions vs "
                      "adversarial accuracy, and mean adversarial accuracy with more / fewer direct convolutions:", "",
                  "| convs/cell | n | tau | adv, more direct | adv, fewer direct |", "| ---: | ---: | ---: | ---: | ---: |"]
        for p in placement:
            lines.append(f"| {p['convs_per_cell']:g} | {p['n']} | {_fmt(p['kendall_direct_vs_adv'], 2)} | "
                         f"{_fmt(p['mean_adv_more_direct'], 1)} | {_fmt(p['mean_adv_fewer_direct'], 1)} |")
    return lines + [""]


def noise_floor() -> list[str]:
    floor = _load(RUNS / "cell" / "noise_floor.json")
    if floor is None:
        return ["*noise floor: not measured yet*", ""]
    c = floor["adv"]
    return [f"### Noise floor: {floor['n']} cell-based candidates scored twice (fine-tuning seeds "
            f"{floor['finetune_seeds'][0]} and {floor['finetune_seeds'][1]})", "",
            f"Adversarial accuracy of the two scorings: Kendall tau {_fmt(c['kendall'], 2)} {_ci(c.get('kendall_ci'))}, "
            f"Pearson r {_fmt(c['pearson'], 2)} {_ci(c.get('pearson_ci'))}; mean absolute difference "
            f"{floor['adv_mean_abs_difference']:.2f} pp (sd of the difference {floor['adv_difference_sd']:.2f} pp).", ""]


def finalists() -> list[str]:
    picks = _load(ROOT / "studies" / "search_retest" / "finalists.json")
    if picks is None:
        return ["*finalists: not trained yet*", ""]
    lines = ["### Finalists trained from scratch (one recipe, CIFAR-10 test set)", "",
             "| architecture | search rank | seed | clean % (n) | PGD-20 % (n) | AutoAttack % (n) | genotype |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for f in picks:
        for run in sorted((RUNS / "finalists").glob(f"{f['name']}-seed*")):
            seed = run.name.rsplit("seed", 1)[1]
            ev = _load(run / "eval-pgd" / "results.json")
            aa = _load(run / "autoattack.json")
            res = {r["attack"]: r for r in ev["results"]} if ev else {}

            def cell(r):  # noqa: ANN001, ANN202
                return "-" if r is None else f"{r['accuracy']:.2f} ({r['n']:,})"

            aa_cell = "-" if aa is None else f"{aa['robust_accuracy']:.2f} ({aa['n']:,})"
            lines.append(f"| {f['name']} | {f['search_rank'] or '-'} | {seed} | {cell(res.get('clean'))} | "
                         f"{cell(res.get('pgd20'))} | {aa_cell} | `{f['genotype']}` |")
    return lines + [""]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    copied = []
    for run, names in PLOTS.items():
        for name in names:
            source = RUNS / run / name
            if source.is_file():
                shutil.copyfile(source, OUT / f"{run}-{name}")
                copied.append(f"{run}-{name}")
    text = ["# Search re-test: the numbers", "",
            "Generated by `python studies/search_retest/report.py` from the run folders in `studies/search_retest/runs/`; "
            "the reading is in `../search-retest.md`.", "",
            *correlations("cell"), *correlations("free"), *noise_floor(), *finalists(),
            "Plots: " + ", ".join(f"[{c}]({c})" for c in copied), ""]
    (OUT / "numbers.md").write_text("\n".join(text))
    print(f"wrote {OUT / 'numbers.md'} and {len(copied)} plots")


if __name__ == "__main__":
    main()
