"""Named attack suites, the AutoAttack cascade as evaluation rows, accuracy-vs-ε sweeps, transfer attacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks import PGD, Attack, AutoAttack
from ..io import write_json_atomic
from ..runtime import autocast_context, eval_mode
from .runner import AttackResult, iterate_batches

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


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, version: str,
                   seed: int, precision: str, batch_size: int, state_path: Path | None,
                   log: Callable[[str], None]) -> list[AttackResult]:
    """The reference AutoAttack; one row per attack with the robust accuracy after it (cumulative) and its own
    seconds, and a final ``autoattack`` row."""
    aa = AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, precision=precision,
                    log=lambda line: log(f"==> autoattack: {line}"))
    aa.run_standard_evaluation(x, y, bs=batch_size, state_path=state_path)
    n = int(y.shape[0])
    settings = {"threat_model": norm, "eps": eps, "version": version, "seed": seed, "engine": aa.describe()["engine"]}
    rows = [AttackResult(f"aa:{name}", round(accuracy * n), n, max(aa.seconds.get(name, 0.0), 1e-9),
                         {**settings, "cumulative": True})
            for name, accuracy in aa.robust_accuracy_history]
    rows.append(AttackResult("autoattack", round(aa.robust_accuracy * n), n,
                             max(sum(aa.seconds.values()), 1e-9),
                             {**settings, "attacks": [name for name, _ in aa.robust_accuracy_history],
                              "resumed": aa.resumed}))
    return rows


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


def eps_sweep(model: nn.Module, dataset: Dataset, *, eps_values: list[float], steps: int, n: int,
              batch_size: int, device: torch.device, precision: str, seed: int, folder: Path,
              log: Callable[[str], None]) -> dict:
    """PGD accuracy at each ε (step ε/4): writes eps_sweep.json and eps_sweep.png (matplotlib)."""
    x_all, y_all = collect(dataset, n, batch_size)
    points = []
    with eval_mode(model):
        for eps in eps_values:
            correct = 0
            attack = PGD(model, eps=eps, alpha=max(eps / 4, 1e-8), steps=steps if eps > 0 else 0, seed=seed,
                         precision=precision)
            for start in range(0, len(y_all), batch_size):
                x = x_all[start:start + batch_size].to(device)
                y = y_all[start:start + batch_size].to(device)
                x_adv = attack(x, y) if eps > 0 else x
                with torch.no_grad(), autocast_context(device, precision):
                    correct += int((model(x_adv).argmax(1) == y).sum())
            accuracy = 100.0 * correct / len(y_all)
            points.append({"eps": eps, "eps_255": eps * 255, "accuracy": accuracy, "correct": correct})
            log(f"==> eps-sweep: eps {eps * 255:.2f}/255 -> {accuracy:.2f}% (PGD-{steps}, n={len(y_all)})")
    data = {"attack": f"pgd{steps}", "step": "eps/4", "n": len(y_all), "points": points}
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
    ax.set_title(f"accuracy vs ε (n={len(y_all)})")
    fig.tight_layout()
    fig.savefig(folder / "eps_sweep.png")
    plt.close(fig)
    return data
