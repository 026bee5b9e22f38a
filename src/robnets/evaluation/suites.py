"""Named attack suites, the accuracy-vs-ε plot, transfer attacks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks import Attack
from ..io import write_json_atomic
from .runner import iterate_batches

SUITES = {
    "quick": ["clean", "pgd20"],
    # RobNets Table 1: clean, FGSM, PGD-20, PGD-100, DeepFool, MI-FGSM
    "paper": ["clean", "fgsm", "pgd20", "pgd100", "deepfool", "mifgsm"],
    "autoattack": ["clean", "autoattack"],
}


def collect(dataset: Dataset, n: int, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples as two tensors."""
    xs, ys = zip(*iterate_batches(dataset, batch_size, n))
    return torch.cat(xs), torch.cat(ys)


class TransferAttack(Attack):
    """Black-box transfer: adversarial examples crafted on a source model, then scored on the target."""

    def __init__(self, target: nn.Module, source_attack: Attack) -> None:
        super().__init__(target, source_attack.eps, precision=source_attack.precision)
        self.source_attack = source_attack
        self.threat_model = source_attack.threat_model

    def describe(self) -> dict:
        return {"transfer_from": type(self.source_attack.model).__name__, **self.source_attack.describe()}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.source_attack(x, y)


def write_sweep(points: list[dict], steps: int, folder: Path, *, partial: bool = False) -> dict:
    """eps_sweep.json and eps_sweep.png (matplotlib) from the sweep's points (ε, accuracy, n)."""
    n = max((p["n"] for p in points), default=0)
    data = {"attack": f"pgd{steps}", "step": "eps/4", "n": n, "points": points, **({"partial": True} if partial else {})}
    write_json_atomic(folder / "eps_sweep.json", data)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([p["eps_255"] for p in points], [p["accuracy"] for p in points], marker="o")
    ax.set_xlabel("ε (× 1/255, L∞)")
    ax.set_ylabel(f"accuracy under PGD-{steps} (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"accuracy vs ε (n={n}{', PARTIAL' if partial else ''})")
    fig.tight_layout()
    fig.savefig(folder / "eps_sweep.png")
    plt.close(fig)
    return data
