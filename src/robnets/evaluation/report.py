"""Result files: JSON for machines, a markdown table for people."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import write_json_atomic, write_text_atomic
from .runner import AttackResult


def results_table(results: Sequence[AttackResult]) -> str:
    """A markdown table: attack, accuracy, n, seconds, images/s."""
    rows = [("attack", "accuracy (%)", "n", "seconds", "images/s")]
    for r in results:
        rate = r.images_per_s
        rows.append((r.attack, f"{r.accuracy:.2f}", str(r.n), f"{r.seconds:.1f}", "-" if rate is None else f"{rate:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(results: Sequence[AttackResult], folder: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``folder``; return their paths."""
    folder = Path(folder)
    payload = {**meta, "environment": environment(), "results": [r.to_dict() for r in results]}
    json_path, md_path = folder / "results.json", folder / "results.md"
    write_json_atomic(json_path, payload)
    header = [f"# Evaluation: {meta.get('model', '?')} on {meta.get('dataset', '?')}", ""]
    if meta.get("partial"):
        header += [f"**PARTIAL**: shard(s) {', '.join(map(str, meta.get('missing_shards', [])))} missing or "
                   f"unfinished; the rows below cover only the points of the shards present. Compute the rest with "
                   f"`{(meta.get('missing_commands') or ['?'])[0]}` (each missing K), then merge again.", ""]
    for key in ("weights", "checkpoint", "threat_model", "eps", "device", "precision"):
        if meta.get(key) is not None:
            header.append(f"- {key}: {meta[key]}")
    lines = header + ["", results_table(results), ""]
    if meta.get("shards") and len(meta["shards"]) > 1:
        lines += ["## Shards", ""] + [
            f"- shard {sh['shard']}: blocks {sh['blocks'][0]}-{sh['blocks'][1] - 1}, "
            f"{'complete' if sh['complete'] else 'UNFINISHED'}, {sh.get('host') or '?'} ({sh.get('device') or '?'}), "
            f"{sh.get('seconds') or '?'} s" for sh in meta["shards"]] + [""]
    if meta.get("sanity"):
        lines += ["## Sanity checks", ""] + [
            f"- [{'FLAG' if f['fired'] else 'ok'}] {f['name']}: {f['message']}" for f in meta["sanity"]] + [""]
    write_text_atomic(md_path, "\n".join(lines))
    return {"json": json_path, "markdown": md_path}


PROJECT_URL = "https://github.com/robnets/robnets"
_DATASET_NAMES = {"cifar10": "cifar10", "cifar10-sample": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet",
                  "svhn": "svhn"}


def model_card(results: Sequence[AttackResult], meta: dict[str, Any], *, name: str, architecture: str,
               authors: str = "", venue: str = "", reported: float | None = None) -> dict[str, Any] | None:
    """A RobustBench ``model_info`` entry filled from what this run measured (None without an AutoAttack row).

    RobustBench reads clean and AutoAttack accuracies as strings with two decimals; the footnote states the
    number of points each was measured on and the engine, since a card from a subset is not a full evaluation.
    """
    by_name = {r.attack: r for r in results}
    aa, clean = by_name.get("autoattack"), by_name.get("clean")
    if aa is None:
        return None
    eps = float(meta["eps"])
    eps_text = f"{round(eps * 255)}/255" if meta.get("threat_model") == "Linf" else f"{eps:g}"
    settings = aa.settings or {}
    footnote = (f"AutoAttack {settings.get('version', 'standard')} ({settings.get('engine', 'reference')}) on the "
                f"first {aa.n:,} test points" + (f"; clean accuracy on the first {clean.n:,}" if clean else "")
                + f"; measured with robnets ({meta.get('device', '?')}, {meta.get('precision', 'fp32')}).")
    return {
        "link": PROJECT_URL, "name": name, "authors": authors, "additional_data": False,
        "number_forward_passes": 1, "dataset": _DATASET_NAMES.get(meta.get("dataset", ""), meta.get("dataset")),
        "venue": venue, "architecture": architecture, "eps": eps_text,
        "clean_acc": f"{clean.accuracy:.2f}" if clean else "", "reported": f"{reported:.2f}" if reported else "",
        "autoattack_acc": f"{aa.accuracy:.2f}", "footnote": footnote,
        "threat_model": meta.get("threat_model"), "n_clean": clean.n if clean else None, "n_autoattack": aa.n,
    }
