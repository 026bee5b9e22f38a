"""Clean and adversarial accuracy of a model on a dataset, attack by attack, with timing and progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks import Attack
from ..runtime import autocast_context, check_precision, eval_mode, progress_bar
from ..data.arrays import ImageArrayDataset
from ..errors import RobnetsError


@dataclass
class AttackResult:
    """Accuracy of the model under one attack (``attack='clean'`` for no attack)."""

    attack: str
    correct: int
    n: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    # per example, in order: was it classified correctly (kept when evaluate(record_examples=True))
    correct_mask: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def accuracy(self) -> float:
        """Accuracy in percent."""
        return 100.0 * self.correct / self.n if self.n else float("nan")

    @property
    def images_per_s(self) -> float | None:
        """Images per second; None when the time is too short to say (below a millisecond)."""
        return self.n / self.seconds if self.seconds >= 1e-3 else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "correct_mask"}
        rate = self.images_per_s
        return {**out, "accuracy": round(self.accuracy, 4), "images_per_s": round(rate, 3) if rate is not None else None}


def iterate_batches(dataset: Dataset, batch_size: int, n: int | None = None,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the first ``n`` examples, in order (fast path for in-memory arrays)."""
    total = len(dataset) if n is None else min(n, len(dataset))
    if isinstance(dataset, ImageArrayDataset):
        for start in range(0, total, batch_size):
            yield dataset.batch(start, min(start + batch_size, total))
        return
    subset = torch.utils.data.Subset(dataset, range(total))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    batches = iter(loader)
    while True:
        try:
            images, labels = next(batches)
        except StopIteration:
            return
        except RobnetsError as exc:  # from a worker: its message carries the worker's traceback; keep the cause
            last = str(exc).strip().splitlines()[-1]
            raise type(exc)(last.split(": ", 1)[1] if last.startswith("robnets.errors.") else last) from None
        yield images, labels.long()


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    attacks: Mapping[str, Attack | None],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    n: int | None = None,
    n_attack: int | None = None,
    precision: str = "fp32",
    num_workers: int = 0,
    progress: bool = True,
    on_result: Callable[[list[AttackResult]], None] | None = None,
    record_examples: bool = False,
) -> list[AttackResult]:
    """Accuracy under each attack (``None`` = clean) on the first ``n`` examples, in order.

    ``n_attack`` limits the attacked examples (attacks cost many forward/backward passes); every
    result records its own ``n``. The model runs in eval mode and its mode is restored afterwards.
    ``on_result`` gets the results so far after each attack (to keep partial results as they come).
    ``record_examples`` keeps each example's correctness (``AttackResult.correct_mask``), so that two models
    or attacks can be compared point by point (paired tests such as McNemar's).
    """
    device = torch.device(device)
    check_precision(precision)
    if batch_size < 1:
        raise RobnetsError(f"batch size must be at least 1, got {batch_size}")
    total = len(dataset) if n is None else min(n, len(dataset))
    if total < 1:
        raise RobnetsError("nothing to evaluate: the dataset (or --n) gives no examples")
    results = []
    with eval_mode(model):
        for name, attack in attacks.items():
            count = total if attack is None or n_attack is None else min(total, n_attack)
            correct, start, masks = 0, time.perf_counter(), []
            bar = progress_bar(total=count, desc=f"{name:>10}", unit="img", enabled=progress, leave=True,
                       dynamic_ncols=True)
            with bar:
                for images, labels in iterate_batches(dataset, batch_size, count, num_workers):
                    images, labels = images.to(device), labels.to(device)
                    if attack is not None:
                        images = attack(images, labels)
                    with torch.no_grad(), autocast_context(device, precision):
                        logits = model(images)
                    if not torch.isfinite(logits).all():
                        raise RobnetsError(
                            f"the model returned non-finite logits (NaN or inf) under {name} at examples "
                            f"{bar.n}-{bar.n + labels.shape[0] - 1}; an accuracy from them would be meaningless: "
                            f"check the weights (or try fp32 instead of bf16)")
                    hits = logits.argmax(dim=1) == labels
                    if record_examples:
                        masks.append(hits.cpu())
                    batch_correct = int(hits.sum())
                    correct += batch_correct
                    bar.update(labels.shape[0])
                    bar.set_postfix(acc=f"{100.0 * correct / max(bar.n, 1):.2f}%")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            settings = attack.describe() if attack is not None else {"precision": precision}
            results.append(AttackResult(name, correct, count, time.perf_counter() - start, settings,
                                        torch.cat(masks) if record_examples else None))
            if on_result is not None:
                on_result(list(results))
    return results
