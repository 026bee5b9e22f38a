"""Every number, table and plot of docs/search-retest.md, recomputed from the committed run files.

The page's generated blocks sit between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; this script
rewrites them (and the plots in docs/search-retest/) and leaves the prose around them alone. Parts whose runs
are not finished say so. ``--check`` writes nothing and exits 1 when the page is not what the files give.

Usage (from the repository root): python studies/search_retest/report.py [--check]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from robnets.evaluation.compare import mcnemar, paired_difference
from robnets.io import unpack_bits
from robnets.models.genotype import Genotype
from robnets.search.analysis import correlation, holm, kendall_standard_error, partial_correlation
from robnets.search.space import structure

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "studies" / "search_retest"
RUNS = HERE / "runs"
DECISIVE = HERE / "decisive"
PAGE = ROOT / "docs" / "search-retest.md"
PLOTS = ROOT / "docs" / "search-retest"
SEARCHES = {"cell": "first cell-based search", "cell_live": "cell-based search, method fixed",
            "free": "cell-free search"}
BOOTSTRAP = 10_000


def _load(path: Path):  # noqa: ANN202
    return json.loads(path.read_text()) if path.is_file() else None


def _f(value, digits: int = 2, sign: bool = False) -> str:  # noqa: ANN001
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ci(interval, digits: int = 2) -> str:  # noqa: ANN001
    return "-" if not interval else f"[{_f(interval[0], digits)}, {_f(interval[1], digits)}]"


def _p(value) -> str:  # noqa: ANN001
    if value is None:
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


# ----------------------------------------------------------------------------------------- the searches
def parameters(genotype: str, C: int = 16, layers: int = 5) -> int:
    import torch

    from robnets.models import RobNet

    with torch.device("meta"):
        return sum(p.numel() for p in RobNet(genotype, C=C, layers=layers).parameters())


def search_rows(name: str) -> list[dict]:
    """The scored candidates of a search with their structure recounted on the effective cells (the first
    searches recorded the nominal one) and the parameters of the effective network."""
    rows = _load(RUNS / name / "architectures.json") or []
    out = []
    for r in rows:
        if r.get("status") != "scored":
            continue
        g = Genotype.parse(r["genotype"])
        effective = structure(g)
        out.append({**r, **{f"eff_{k}": v for k, v in effective.items()},
                    "nominal_density": g.density(), "eff_params": parameters(str(g.effective()))})
    return out


def _tau(x, y) -> dict:  # noqa: ANN001
    return correlation(list(x), list(y), bootstrap=2000)


def _partial(x, y, z) -> dict:  # noqa: ANN001
    """Partial Kendall tau (residuals on a line in z) with its bootstrap interval and a p-value (Kendall's test
    on the residuals)."""
    out = partial_correlation(list(x), list(y), list(z), bootstrap=2000)
    xs, ys, zs = (np.asarray(v, dtype=float) for v in (x, y, z))
    design = np.column_stack([np.ones_like(zs), zs])
    rx = xs - design @ np.linalg.lstsq(design, xs, rcond=None)[0]
    ry = ys - design @ np.linalg.lstsq(design, ys, rcond=None)[0]
    out["kendall_p"] = float(stats.kendalltau(rx, ry).pvalue)
    return out


def claim_rows(rows: list[dict], label: str) -> list[tuple]:
    """(claim, relation, correlation dict) for the density and placement analyses of one search."""
    def col(key, subset=None):  # noqa: ANN001, ANN202
        return [r[key] for r in (subset if subset is not None else rows)]

    dense = [r for r in rows if r["eff_density"] >= 0.55]
    live = [r for r in rows if r["eff_fully_live"]]
    out = [
        (1, "nominal density vs adversarial acc", _tau(col("nominal_density"), col("adv"))),
        (1, "effective density vs adversarial acc", _tau(col("eff_density"), col("adv"))),
        (1, "effective density vs adversarial acc, at equal parameters (partial)",
         _partial(col("eff_density"), col("adv"), col("eff_params"))),
        (1, "effective density vs adversarial acc, cells of density >= 0.55", _tau(col("eff_density", dense),
                                                                                    col("adv", dense))),
        (1, "effective density vs adversarial acc, fully live cells", _tau(col("eff_density", live),
                                                                            col("adv", live))),
        (1, "effective density vs clean acc", _tau(col("eff_density"), col("clean"))),
        (1, "effective density vs clean-adversarial gap", _tau(col("eff_density"), col("gap"))),
        (1, "effective parameters vs adversarial acc", _tau(col("eff_params"), col("adv"))),
        (1, "effective density vs effective parameters", _tau(col("eff_density"), col("eff_params"))),
        (1, "clean vs adversarial acc", _tau(col("clean"), col("adv"))),
        (2, "direct-edge convolutions vs adversarial acc, at equal convolutions (partial)",
         _partial(col("eff_direct_convs_per_cell"), col("adv"), col("eff_convs_per_cell"))),
        (2, "direct-edge convolutions vs adversarial acc, at equal parameters (partial)",
         _partial(col("eff_direct_convs_per_cell"), col("adv"), col("eff_params"))),
    ]
    return [(claim, f"{label}: {relation}", c) for claim, relation, c in out]


def fsp_rows(rows: list[dict], label: str) -> list[tuple]:
    out = []
    for key, what in (("fsp_deep", "deep-cell FSP loss after fine-tuning"),
                      ("fsp_relative_deep", "deep-cell relative FSP loss after fine-tuning"),
                      ("fsp_inherited_deep", "deep-cell FSP loss as inherited (the filter's view)"),
                      ("fsp_inherited_relative_deep", "deep-cell relative FSP loss as inherited")):
        if any(r.get(key) is not None for r in rows):
            out.append((3, f"{label}: {what} vs clean-adversarial gap",
                        _tau([r.get(key) for r in rows], [r["gap"] for r in rows])))
            out.append((3, f"{label}: {what} vs adversarial acc",
                        _tau([r.get(key) for r in rows], [r["adv"] for r in rows])))
    return out


def claims_block() -> tuple[dict[str, str], dict]:
    """The claims' tables: every correlation with its interval, p and the Holm-adjusted p over all of them."""
    family, facts = [], {}
    for name in ("cell", "cell_live"):
        rows = search_rows(name)
        if rows:
            family += claim_rows(rows, SEARCHES[name])
            facts[name] = rows
    free = search_rows("free")
    if free:
        family += fsp_rows(free, SEARCHES["free"])
        facts["free"] = free
    if "cell_live" in facts:
        rows = facts["cell_live"]
        family += fsp_rows(rows, SEARCHES["cell_live"])
        if any(r.get("fsp_relative_deep") is not None for r in rows):  # what the raw loss measures
            family.append((3, f"{SEARCHES['cell_live']}: raw vs relative deep-cell FSP loss",
                           _tau([r["fsp_deep"] for r in rows], [r["fsp_relative_deep"] for r in rows])))
            family.append((3, f"{SEARCHES['cell_live']}: raw deep-cell FSP loss vs effective parameters",
                           _tau([r["fsp_deep"] for r in rows], [r["eff_params"] for r in rows])))
    adjusted = holm([c.get("kendall_p") for _, _, c in family])
    blocks = {}
    for claim in (1, 2, 3):
        lines = ["| relation | n | Kendall τ [95 % CI] | p | p, Holm (all " + f"{len(family)} tests) |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for (k, label, c), adj in zip(family, adjusted):
            if k == claim:
                lines.append(f"| {label} | {c['n']} | {_f(c['kendall'])} {_ci(c.get('kendall_ci'))} | "
                             f"{_p(c.get('kendall_p'))} | {_p(adj)} |")
        blocks[f"claim{claim}"] = "\n".join(lines)
    facts["family"] = family
    facts["adjusted"] = adjusted
    return blocks, facts


def structure_block(facts: dict) -> str:
    """What the first searches actually sampled: dead nodes, convolutions fed by zeros, ignored inputs."""
    lines = ["| search | scored | fully live | fewer than 4 live nodes | a convolution fed only by a dead node | "
             "previous cell's output never read | effective density range | τ(density, parameters) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name in ("cell", "cell_live", "free"):
        rows = facts.get(name)
        if not rows:
            continue
        cells = [Genotype.parse(r["genotype"]) for r in rows]
        few = sum(any(sum(c.live_nodes()[2:]) < 4 for c in g.cells) for g in cells)
        dead_conv = sum(any(e.has_conv and not eff.edges[i].is_connected for c, eff in zip(g.cells, g.effective().cells)
                            for i, e in enumerate(c.edges)) for g in cells)
        no_s1 = sum(any(not c.reads_inputs()[1] for c in g.cells) for g in cells)
        live = sum(g.is_fully_live() for g in cells)
        dens = [r["eff_density"] for r in rows]
        tau = stats.kendalltau(dens, [r["eff_params"] for r in rows])[0]
        lines.append(f"| {SEARCHES[name]} | {len(rows)} | {live} | {few} | {dead_conv} | {no_s1} | "
                     f"{min(dens):.2f}-{max(dens):.2f} | {tau:.2f} |")
    return "\n".join(lines)


def noise_block() -> str:
    floor = _load(RUNS / "cell" / "noise_floor.json")
    if floor is None:
        return "*not measured*"
    c = floor["adv"]
    return (f"{floor['n']} candidates of the first cell-based search scored a second time (fine-tuning seeds "
            f"{floor['finetune_seeds'][0]} and {floor['finetune_seeds'][1]}): Kendall τ {_f(c['kendall'])} "
            f"{_ci(c.get('kendall_ci'))}, Pearson r {_f(c['pearson'])} {_ci(c.get('pearson_ci'))}; mean absolute "
            f"difference {floor['adv_mean_abs_difference']:.2f} points (sd of the difference "
            f"{floor['adv_difference_sd']:.2f}).")


# ----------------------------------------------------------------------------------------- wall times
def _segments(lines: list[str]) -> list[list[tuple[float, str]]]:
    """Lines of a log as (seconds since the first line, text), split into one list per process start."""
    out: list[list[tuple[float, str]]] = []
    offset, last = 0.0, None
    for line in lines:
        m = re.match(r"\[(\d\d):(\d\d):(\d\d)\] (.*)", line)
        if not m:
            continue
        t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + offset
        if last is not None and t < last - 1:  # past midnight
            offset += 86400
            t += 86400
        last = t
        text = re.sub(r"^\[rank \d+\] ", "", m[4])  # a distributed search's lines name their rank
        if text.startswith(("search in ", "training ")) or not out:
            out.append([])
        out[-1].append((t, text))
    return out


# what the logs cannot say: the cell_live scoring processes were suspended for about 10 minutes mid-run
SCORING_NOTES = {"cell_live": "; two processes (one for the first two); the wall time and the longest candidate include about 10 min "
                              "in which both processes were suspended"}


def search_times(name: str) -> dict[str, float] | None:
    log = RUNS / name / "search.log"
    if not log.is_file():
        return None
    supernet = scoring = 0.0
    loss, since = None, 0
    for segment in _segments(log.read_text().splitlines()):
        start = next((t for t, text in segment if text.startswith("supernet: ")), None)
        end = next((t for t, text in segment if text.startswith(("supernet trained", "stopped at supernet"))), None)
        if start is not None and end is not None:
            supernet += end - start
        resumed = next((int(m[1]) for _, text in segment for m in [re.match(r"resuming supernet training at step "
                                                                             r"(\d+)", text)] if m), 0)
        for t, text in segment:
            m = re.match(r"supernet trained: .*mean loss ([\d.]+)", text)
            if m:
                loss, since = float(m[1]), resumed
        first = next((t for t, text in segment if text.startswith(("candidate ", "FSP filter"))), None)
        scored = [t for t, text in segment if text.startswith(("candidate ", "search done"))]
        if first is not None and scored:
            begin = min(first, next((t for t, text in segment if text.startswith("supernet trained")
                                     or text.startswith("supernet already")), first))
            scoring += max(scored) - begin
    rescore = 0.0
    for segment in _segments(log.read_text().splitlines()):
        start = next((t for t, text in segment if text.startswith("re-scoring")), None)
        end = next((t for t, text in segment if text.startswith("noise floor")), None)
        if start is not None and end is not None:
            rescore += end - start
    return {"supernet": supernet, "scoring": scoring, "rescore": rescore, "supernet_loss": loss,
            "supernet_loss_since": since}


def train_seconds(folder: Path) -> tuple[float, bool]:
    """A training run's wall time from its train.log: each process's span, summed over the resumes (validation
    and the probe included; the time between a stop and its resume not), and whether that is all of it: a
    process ended without a logged stop counts only to its last line."""
    spans: list[list[float]] = []
    closed: list[bool] = []
    for segment in _segments((folder / "train.log").read_text().splitlines()):
        for t, text in segment:
            if text.startswith(("training run folder", "resuming ")) or not spans:
                spans.append([t, t])
                closed.append(False)
            spans[-1][1] = t
            closed[-1] = text.startswith(("done: ", "stopped at "))
    return sum(end - start for start, end in spans), all(closed)


def walltime_block() -> str:
    lines = ["| part | wall time (from the logs) | note |", "| --- | ---: | --- |"]
    for name in ("free", "cell", "cell_live"):
        t = search_times(name)
        if t is None:
            continue
        if t["supernet"]:
            lines.append(f"| {SEARCHES[name]}: supernet, 1,500 steps | {t['supernet'] / 60:.0f} min | mean "
                         f"adversarial training loss {_f(t['supernet_loss'], 3)} over steps "
                         f"{t['supernet_loss_since'] + 1:,}-1,500 (chance: ln 10 = 2.303) |")
        rows = [r for r in (_load(RUNS / name / "architectures.json") or []) if r.get("status") == "scored"]
        if rows:
            per = [r["seconds"] for r in rows]
            lines.append(f"| {SEARCHES[name]}: {len(rows)} candidates | {t['scoring'] / 60:.0f} min | "
                         f"{min(per):.0f}-{max(per):.0f} s each (median {np.median(per):.0f})"
                         f"{SCORING_NOTES.get(name, '')} |")
        if t["rescore"]:
            lines.append(f"| {SEARCHES[name]}: noise floor, 12 re-scores | {t['rescore'] / 60:.0f} min | |")
    finals = sorted((RUNS / "finalists").glob("*-seed*"))
    if finals:
        train = [train_seconds(f)[0] for f in finals]
        aa = [_load(f / "autoattack.json")["seconds"] for f in finals if (f / "autoattack.json").is_file()]
        lines.append(f"| first finalists: training, {len(finals)} runs | {sum(train) / 60:.0f} min | "
                     f"{min(train) / 60:.1f}-{max(train) / 60:.1f} min each |")
        if aa:
            lines.append(f"| first finalists: AutoAttack (n = 200), {len(aa)} runs | {sum(aa) / 60:.0f} min | "
                         f"{min(aa) / 60:.0f}-{max(aa) / 60:.0f} min each |")
    done = [f for f in sorted((DECISIVE / "runs").glob("*-seed*")) if (f / "eval.json").is_file()]

    def runs(n: int) -> str:
        return f"{n} run" + ("s" if n != 1 else "")

    def spread(minutes: list[float], what: str) -> str:
        low, high = f"{min(minutes):.0f}", f"{max(minutes):.0f}"
        return f"{low} min" if low == high else f"{low}-{high} min {what}"

    if done:
        evals = [_load(f / "eval.json") for f in done]
        timed = [train_seconds(f) for f in done]
        whole = [t for t, complete in timed if complete]
        cut = len(timed) - len(whole)
        ev = [e["eval_seconds"] for e in evals]
        lines.append(f"| decisive experiment: training, {runs(len(done))} | {'at least ' if cut else ''}"
                     f"{sum(t for t, _ in timed) / 3600:.1f} h | "
                     + (f"{spread([t / 60 for t in whole], 'each')}, one thread each" if whole else "one thread each")
                     + (f"; {runs(cut)} cut off between log lines: counted to the last line before the cut and "
                        f"left out of the range" if cut else "") + " |")
        lines.append(f"| decisive experiment: clean + PGD-20, {runs(len(done))} | {sum(ev) / 60:.0f} min | |")
        apgd = [_load(f / "apgd.json") for f in done if (f / "apgd.json").is_file()]
        if apgd:
            secs = [sum(a["seconds"] for a in x["per_attack"]) for x in apgd]
            lines.append(f"| decisive experiment: APGD-CE + APGD-T (n = 500), {runs(len(apgd))} | "
                         f"{sum(secs) / 3600:.1f} h | {spread([t / 60 for t in secs], 'each')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- first finalists
def _aa_flags(folder: Path) -> np.ndarray | None:
    """Per-point robustness of a first finalist's AutoAttack run (its state file records the flags)."""
    from safetensors import safe_open

    path = folder / "autoattack.state.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("flags").numpy().astype(bool)


def first_finalists() -> dict | None:
    picks = _load(HERE / "finalists.json")
    if picks is None:
        return None
    out = {}
    for f in picks:
        runs = {}
        for run in sorted((RUNS / "finalists").glob(f"{f['name']}-seed*")):
            ev = _load(run / "eval-pgd" / "results.json")
            res = {r["attack"]: r for r in ev["results"]} if ev else {}
            runs[int(run.name.rsplit("seed", 1)[1])] = {
                "clean": res.get("clean", {}).get("accuracy"), "pgd20": res.get("pgd20", {}).get("accuracy"),
                "aa": (_load(run / "autoattack.json") or {}).get("robust_accuracy"), "aa_flags": _aa_flags(run)}
        out[f["name"]] = {**f, "runs": runs, "genotype_obj": Genotype.parse(f["genotype"]),
                          "params": parameters(f["genotype"])}
    return out


def shrinkage_block() -> tuple[str, dict]:
    first = first_finalists()
    lines = ["| comparison | in the search (PGD-10, 500 held-out training images) | from scratch: PGD-20 "
             "(2,000 test images) | from scratch: AutoAttack or APGD | seeds |", "| --- | ---: | ---: | ---: | ---: |"]
    facts: dict = {}
    if first:
        top, bottom = first["top"], first["bottom"]
        seeds = sorted(set(top["runs"]) & set(bottom["runs"]))
        pgd = [top["runs"][s]["pgd20"] - bottom["runs"][s]["pgd20"] for s in seeds]
        aa = top["runs"][0]["aa"] - bottom["runs"][0]["aa"]
        m = mcnemar(top["runs"][0]["aa_flags"], bottom["runs"][0]["aa_flags"])
        facts["first"] = {"search_gap": top["search_adv"] - bottom["search_adv"], "pgd": pgd, "aa": aa, "mcnemar": m}
        lines.append(f"| first search: top vs bottom cell (C=16, unmatched: {top['params']:,} vs "
                     f"{bottom['params']:,} parameters) | {top['search_adv'] - bottom['search_adv']:+.1f} | "
                     f"{', '.join(f'{d:+.2f}' for d in pgd)} (seeds {', '.join(map(str, seeds))}) | "
                     f"{aa:+.1f} (AutoAttack, n = 200; {m['only_a']} points robust only for the top cell, "
                     f"{m['only_b']} only for the bottom one, McNemar p {_p(m['p'])}) | {len(seeds)} |")
        rand = first["random"]
        lines.append(f"| first search: top vs a sampled cell ranked {rand['search_rank']} | "
                     f"{top['search_adv'] - rand['search_adv']:+.1f} | "
                     f"{top['runs'][0]['pgd20'] - rand['runs'][0]['pgd20']:+.2f} (seed 0) | "
                     f"{top['runs'][0]['aa'] - rand['runs'][0]['aa']:+.1f} (AutoAttack, n = 200) | 1 |")
    arms = decisive_results()
    if arms and arms["complete_pairs"]:
        for name, other in (("top1", "bottom1"), ("top1", "middle1")):
            a, b = arms["arms"][name], arms["arms"][other]
            seeds = sorted(set(a["runs"]) & set(b["runs"]))
            if not seeds:
                continue
            d = [a["runs"][s]["pgd20"] - b["runs"][s]["pgd20"] for s in seeds]
            lines.append(f"| decisive experiment: {name} vs {other} (matched parameters) | "
                         f"{a['search_adv'] - b['search_adv']:+.1f} | {np.mean(d):+.2f} (mean of "
                         f"{', '.join(f'{x:+.2f}' for x in d)}) | - | {len(seeds)} |")
    return "\n".join(lines), facts


# ----------------------------------------------------------------------------------------- the decisive experiment
def decisive_results() -> dict | None:
    arms_file = _load(DECISIVE / "arms.json")
    if arms_file is None:
        return None
    points = _load(DECISIVE / "points.json")
    out = {"arms": {}, "passed_over": arms_file["passed_over"], "points": points, "complete_pairs": False}
    for arm in arms_file["arms"]:
        runs = {}
        for seed in range(arm["seeds"]):
            folder = DECISIVE / "runs" / f"{arm['name']}-seed{seed}"
            ev = _load(folder / "eval.json")
            if ev is None:
                continue
            run = {"clean": ev["clean"]["accuracy"], "pgd20": ev["pgd20"]["accuracy"],
                   "pgd_bits": unpack_bits(ev["pgd20"]["bits"], ev["pgd20"]["n"]),
                   "clean_bits": unpack_bits(ev["clean"]["bits"], ev["clean"]["n"])}
            ap = _load(folder / "apgd.json")
            if ap is not None:
                run.update(apgd=ap["robust_accuracy"], apgd_bits=unpack_bits(ap["robust_bits"], ap["n"]))
            runs[seed] = run
        out["arms"][arm["name"]] = {**arm, "runs": runs}
    out["complete_pairs"] = any(a["runs"] for a in out["arms"].values())
    out["all_done"] = all(len(a["runs"]) == a["seeds"] and (a["name"] not in ("top1", "robnet_large") or all(
        "apgd" in r for r in a["runs"].values())) for a in out["arms"].values())
    return out


def _hierarchical_tau(scores: list[float], per_arm: list[list[float]], seed: int = 0) -> tuple[float, list[float]]:
    """Kendall tau of search score vs seed-mean accuracy; 95 % interval from resampling arms and, within each
    resampled arm, its seeds."""
    point = stats.kendalltau(scores, [np.mean(v) for v in per_arm])[0]
    rng = np.random.default_rng(seed)
    values = []
    n = len(scores)
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, n, n)
        xs = [scores[i] for i in pick]
        ys = [np.mean(rng.choice(per_arm[i], len(per_arm[i]))) for i in pick]
        if len(set(xs)) > 1 and len(set(ys)) > 1:
            values.append(stats.kendalltau(xs, ys)[0])
    return float(point), [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _group_difference(top: list[list[float]], bottom: list[list[float]], seed: int = 0) -> tuple[float, list[float]]:
    rng = np.random.default_rng(seed)
    point = np.mean([np.mean(v) for v in top]) - np.mean([np.mean(v) for v in bottom])
    values = []
    for _ in range(BOOTSTRAP):
        t = [top[i] for i in rng.integers(0, len(top), len(top))]
        b = [bottom[i] for i in rng.integers(0, len(bottom), len(bottom))]
        values.append(np.mean([np.mean(rng.choice(v, len(v))) for v in t])
                      - np.mean([np.mean(rng.choice(v, len(v))) for v in b]))
    return float(point), [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def decisive_blocks() -> dict[str, str]:
    res = decisive_results()
    if res is None:
        pending = "*The arms are picked when the search `runs/cell_live` is complete.*"
        return {"decisive-arms": pending, "decisive-results": "*No run done yet.*",
                "decisive-decisions": "*No verdict before every run is done.*"}
    lines = ["| arm | search rank | PGD-10 in the search | effective density | convs/cell | C | parameters (vs "
             "RobNet-large) | MFLOPs / image | genotype |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for a in res["arms"].values():
        lines.append(f"| {a['name']} | {a['search_rank'] or '-'} | {_f(a['search_adv'], 1)} | {a['density']:.2f} | "
                     f"{a['convs_per_cell']:g} | {a['C']} | {a['params']:,} ({a['params_vs_reference']:+.1%}) | "
                     f"{a['flops'] / 1e6:.0f} | `{a['genotype']}` |")
    if res["passed_over"]:
        lines += ["", "Passed over (no integer C within ±3 %): " + "; ".join(
            f"rank {p['search_rank']} `{p['genotype']}` (nearest C={p['C']}: {p['params_vs_reference']:+.1%})"
            for p in res["passed_over"]) + "."]
    blocks = {"decisive-arms": "\n".join(lines)}
    lines = ["| arm | seeds done | clean % (n = 10,000), mean ± sd | PGD-20 % (n = 2,000), mean ± sd | "
             "APGD-CE + APGD-T % (n = 500), mean ± sd | per seed PGD-20 |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for a in res["arms"].values():
        runs = a["runs"]
        if not runs:
            lines.append(f"| {a['name']} | 0 of {a['seeds']} | - | - | - | - |")
            continue

        def ms(key, runs=runs):  # noqa: ANN001, ANN202
            v = [r[key] for r in runs.values() if key in r]
            if not v:
                return "-"
            return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

        lines.append(f"| {a['name']} | {len(runs)} of {a['seeds']} | {ms('clean')} | {ms('pgd20')} | {ms('apgd')} | "
                     f"{', '.join(format(runs[s]['pgd20'], '.2f') for s in sorted(runs))} |")
    blocks["decisive-results"] = "\n".join(lines)
    blocks["decisive-decisions"] = decisions(res)
    return blocks


def decisions(res: dict) -> str:
    if not res["all_done"]:
        done = sum(len(a["runs"]) for a in res["arms"].values())
        total = sum(a["seeds"] for a in res["arms"].values())
        paired = [a for a in res["arms"].values() if a["name"] in ("top1", "robnet_large")]
        apgd_done = sum("apgd" in r for a in paired for r in a["runs"].values())
        apgd_total = sum(a["seeds"] for a in paired)
        return (f"*{done} of {total} runs done: no verdict before every run and AutoAttack evaluation is done "
                f"(registered rule; {apgd_done} of {apgd_total} AutoAttack evaluations done).*")
    arms = res["arms"]
    searched = [a for a in arms.values() if a["name"] != "robnet_large"]
    scores = [a["search_adv"] for a in searched]
    per_arm = [[r["pgd20"] for r in a["runs"].values()] for a in searched]
    tau, tau_ci = _hierarchical_tau(scores, per_arm)
    top = [[r["pgd20"] for r in arms[n]["runs"].values()] for n in ("top1", "top2", "top3")]
    bottom = [[r["pgd20"] for r in arms[n]["runs"].values()] for n in ("bottom1", "bottom2", "bottom3")]
    diff, diff_ci = _group_difference(top, bottom)
    verdict_a = ("**informative**" if tau_ci[0] > 0 else "**no evidence that it is informative**")
    t, r = arms["top1"]["runs"], arms["robnet_large"]["runs"]
    seeds = sorted(set(t) & set(r))
    pgd = paired_difference([t[s]["pgd20"] for s in seeds], [r[s]["pgd20"] for s in seeds])
    ap = paired_difference([t[s]["apgd"] for s in seeds], [r[s]["apgd"] for s in seeds])
    clean = paired_difference([t[s]["clean"] for s in seeds], [r[s]["clean"] for s in seeds])
    if pgd["ci"][0] > 0 and ap["mean"] > 0:
        verdict_b = "**the searched cell is more robust than RobNet-large's**"
    elif pgd["ci"][1] < 0 and ap["mean"] < 0:
        verdict_b = "**RobNet-large's cell is more robust than the searched cell**"
    else:
        verdict_b = "**no difference detected**"
    lines = [
        f"(a) Kendall τ between the search score and the seed-mean PGD-20 accuracy of the 8 searched arms: "
        f"{tau:.2f} {_ci(tau_ci)} (hierarchical bootstrap, {BOOTSTRAP:,} resamples): {verdict_a}. Top three minus "
        f"bottom three arms, seed-mean PGD-20: {diff:+.2f} points {_ci(diff_ci)}.",
        "",
        f"(b) `top1` minus `robnet_large`, seed-paired over seeds {', '.join(map(str, seeds))}: PGD-20 "
        f"{pgd['mean']:+.2f} points, 95 % t interval {_ci(pgd['ci'])} (per seed "
        f"{', '.join(f'{d:+.2f}' for d in pgd['differences'])}); APGD-CE + APGD-T {ap['mean']:+.2f} points "
        f"{_ci(ap['ci'])}; clean {clean['mean']:+.2f} {_ci(clean['ci'])}: {verdict_b}.",
        "",
        "| seed | PGD-20: only top1 / only robnet_large robust (McNemar p) | APGD: only top1 / only robnet_large "
        "(McNemar p) |", "| ---: | ---: | ---: |"]
    for s in seeds:
        m1, m2 = mcnemar(t[s]["pgd_bits"], r[s]["pgd_bits"]), mcnemar(t[s]["apgd_bits"], r[s]["apgd_bits"])
        lines.append(f"| {s} | {m1['only_a']} / {m1['only_b']} ({_p(m1['p'])}) | {m2['only_a']} / {m2['only_b']} "
                     f"({_p(m2['p'])}) |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- plots
def plots(facts: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("cell", "cell_live"):
        rows = facts.get(name)
        if not rows:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        live = [r["eff_fully_live"] for r in rows]
        for ax, key, label in ((axes[0], "eff_density", "effective density"),
                               (axes[1], "eff_params", "effective parameters")):
            xs = [r[key] for r in rows]
            ax.scatter([x for x, ok in zip(xs, live) if ok], [r["adv"] for r, ok in zip(rows, live) if ok], s=18,
                       label="fully live")
            ax.scatter([x for x, ok in zip(xs, live) if not ok], [r["adv"] for r, ok in zip(rows, live) if not ok],
                       s=18, marker="x", label="with dead nodes or an unread input")
            ax.set_xlabel(label)
            ax.set_ylabel("PGD-10 accuracy in the search (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{SEARCHES[name]} (n = {len(rows)})", fontsize=10)
        fig.tight_layout()
        path = PLOTS / f"{name}-structure_vs_adv.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    for name, picks in (("cell", "cell/noise_floor.png"), ("free", "free/fsp_filter.png")):
        source = RUNS / picks
        if source.is_file():
            shutil.copyfile(source, PLOTS / f"{name}-{source.name}")
            written.append(f"{name}-{source.name}")
    res = decisive_results()
    if res and res["complete_pairs"]:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for a in res["arms"].values():
            if not a["runs"] or a["search_adv"] is None:
                continue
            ys = [r["pgd20"] for r in a["runs"].values()]
            ax.scatter([a["search_adv"]] * len(ys), ys, s=14, alpha=0.6)
            ax.errorbar(a["search_adv"], np.mean(ys), fmt="o", color="black", ms=4)
            ax.annotate(a["name"], (a["search_adv"], np.mean(ys)), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ref = res["arms"]["robnet_large"]["runs"]
        if ref:
            ax.axhline(np.mean([r["pgd20"] for r in ref.values()]), color="tab:red", ls="--", lw=1,
                       label="RobNet-large's cell (seed mean)")
            ax.legend(fontsize=8)
        ax.set_xlabel("PGD-10 accuracy in the search (%)")
        ax.set_ylabel("PGD-20 accuracy from scratch (%, 2,000 test points)")
        ax.set_title("Search score vs trained from scratch (matched parameters)", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(PLOTS / "decisive.png", dpi=110)
        plt.close(fig)
        written.append("decisive.png")
    return written


# ----------------------------------------------------------------------------------------- the page
def blocks() -> tuple[dict[str, str], dict]:
    claims, facts = claims_block()
    out = dict(claims)
    out["structure"] = structure_block(facts)
    out["walltime"] = walltime_block()
    out["noise"] = noise_block()
    out["shrinkage"], shrink = shrinkage_block()
    facts["shrinkage"] = shrink
    out.update(decisive_blocks())
    power = [f"n = {n}: standard error of τ {kendall_standard_error(n):.3f}, a true τ of about "
             f"{2.8 * kendall_standard_error(n):.2f} is found four times in five" for n in (8, 32, 37, 64)]
    out["power"] = "; ".join(power) + "."
    return out, facts


def render(page: str, generated: dict[str, str]) -> str:
    def fill(match: re.Match) -> str:
        name = match[1]
        if name not in generated:
            raise SystemExit(f"report: the page has a block '{name}' that this script does not generate")
        return f"<!-- report:{name} -->\n{generated[name]}\n<!-- /report:{name} -->"

    return re.sub(r"<!-- report:([\w-]+) -->.*?<!-- /report:\1 -->", fill, page, flags=re.S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page is out of date")
    args = parser.parse_args()
    generated, facts = blocks()
    page = PAGE.read_text()
    new = render(page, generated)
    if args.check:
        if new != page:
            print("report: docs/search-retest.md differs from what the run files give; run "
                  "python studies/search_retest/report.py", file=sys.stderr)
            return 1
        return 0
    written = plots(facts)
    PAGE.write_text(new)
    print(f"rewrote {len(re.findall(r'<!-- report:', new))} blocks of {PAGE.relative_to(ROOT)}; plots: "
          f"{', '.join(written)} ({dt.date.today().isoformat()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
