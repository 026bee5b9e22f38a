"""Throughput of the plain (original) execution against the fast path, measured in one run on one device.

Three workloads per model, each timed after warm-up:

* ``forward``: eval-mode forward passes (no gradients);
* ``pgd20``: PGD-20 evaluation (20 attack steps, then the scoring forward);
* ``train_pgd7``: one PGD-7 adversarial training step (7 attack steps, forward/backward, SGD update).

The plain path does what the original implementation does: every op, absent edges multiplied by zero,
BatchNorm unfused, NCHW, and (for training) the attack run with the model in train mode, as the original
``AttackPGD`` did. The fast path runs attacks on :class:`FastRobNet` (eval mode, CUDA graphs on GPU) and the
weight update on the source model (absent edges skipped, channels-last; with ``ROBNETS_COMPILE=1`` both the
attack engine and the weight update's forward/backward run through ``torch.compile``).

FLOP convention: F = forward FLOPs per image (2 per multiply-add); an input-gradient backward costs F
(weight gradients are not needed), a training backward 2F. So forward = F, PGD-20 = 41 F, PGD-7 training
step = 7 x 2F + 3F = 17 F per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robnets.attacks import PGD
from robnets.models import RobNet, create_model
from robnets.models.flops import flops_per_image
from robnets.acceleration import accelerate, compile_for_training, compile_from_environment, pgd_loop_for

FLOP_MULTIPLIER = {"forward": 1, "pgd20": 41, "train_pgd7": 17}
EPS, ALPHA = 8 / 255, 2 / 255


@dataclass
class Measurement:
    model: str
    path: str
    workload: str
    batch_size: int
    images_per_s: float
    seconds_per_batch: float
    flops_per_image: int
    tflops: float
    peak_memory_mib: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def original_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The original AttackPGD loop, verbatim in behaviour: random start not clipped, model mode untouched."""
    x_adv = x.detach() + torch.zeros_like(x).uniform_(-EPS, EPS)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + ALPHA * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def _workloads(name: str, path: str, model: nn.Module, device: torch.device, x: torch.Tensor,
               y: torch.Tensor, precision: str) -> dict[str, Callable[[], None]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else torch.autocast(device.type, enabled=False))

    if path == "plain":
        if isinstance(model, RobNet):
            model.set_reference_mode(True)
        engine = model
        pgd20 = PGD(model, eps=EPS, alpha=ALPHA, steps=20, precision=precision)

        def train_step() -> None:
            model.train()
            with autocast:
                x_adv = original_attack(model, x, y, 7)  # train-mode attack, as the original
                loss = F.cross_entropy(model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        if isinstance(model, RobNet):
            model.set_reference_mode(False)
        model.to(memory_format=torch.channels_last)  # as the trainer: faster depthwise convs
        engine, _ = accelerate(model, device)
        # ROBNETS_COMPILE=1 (--compile): the weight update compiled too, as train.compile does in the trainer
        train_model = compile_for_training(model) if compile_from_environment() else model
        loop = pgd_loop_for(device)
        pgd20 = PGD(engine, eps=EPS, alpha=ALPHA, steps=20, precision=precision, step_loop=loop)
        pgd7 = PGD(engine, eps=EPS, alpha=ALPHA, steps=7, precision=precision, step_loop=loop)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def train_step() -> None:
            x_adv = pgd7(x_cl, y)
            model.train()
            with autocast:
                loss = F.cross_entropy(train_model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def forward() -> None:
        engine.eval()
        with torch.no_grad(), autocast:
            engine(x)

    def pgd_eval() -> None:
        x_adv = pgd20(x, y)
        with torch.no_grad(), autocast:
            engine(x_adv)

    return {"forward": forward, "pgd20": pgd_eval, "train_pgd7": train_step}


def measure_model(name: str, device: torch.device, batch_size: int, *, iters: int = 2, warmup: int = 1,
                  precision: str = "fp32", workloads: tuple[str, ...] = ("forward", "pgd20", "train_pgd7"),
                  paths: tuple[str, ...] = ("plain", "fast"), fast_batch_size: int | None = None,
                  skip_out_of_memory: bool = False, log: Callable[[str], None] = print) -> list[Measurement]:
    """Measure every workload for both paths of one model, on the same inputs. ``fast_batch_size``: the fast
    path's batch, when it differs from the plain path's (it needs less memory, so a larger batch fits: part of
    what the fast path is); the plain path's inputs are the first ``batch_size`` of the fast path's.
    ``skip_out_of_memory``: a workload that runs out of GPU memory is logged and left out instead of ending
    the run (the other rows still count)."""
    batches = {"plain": batch_size, "fast": fast_batch_size or batch_size}
    largest = max(batches[path] for path in paths)
    g = torch.Generator().manual_seed(0)
    x_all = torch.rand(largest, 3, 32, 32, generator=g).to(device)
    y_all = torch.randint(0, 10, (largest,), generator=g).to(device)
    out = []
    for path in paths:
        batch_size = batches[path]
        x, y = x_all[:batch_size], y_all[:batch_size]
        torch.manual_seed(0)
        model = create_model(name).to(device)
        flops = flops_per_image(model)
        jobs = _workloads(name, path, model, device, x, y, precision)
        for workload in workloads:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                seconds = _time(jobs[workload], device, iters if workload == "forward" else max(1, iters // 2),
                                warmup)
            except torch.OutOfMemoryError:
                if not skip_out_of_memory:
                    raise
                log(f"  {name:16s} {path:5s} {workload:10s} out of memory at batch {batch_size}: skipped")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            ips = batch_size / seconds
            tflops = ips * flops * FLOP_MULTIPLIER[workload] / 1e12
            m = Measurement(name, path, workload, batch_size, ips, seconds, flops, tflops, peak)
            log(f"  {name:16s} {path:5s} {workload:10s} {ips:10.1f} img/s")
            out.append(m)
        del model, jobs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def largest_batch(name: str, device: torch.device, start: int = 64, limit: int = 8192) -> int:
    """Largest power-of-two batch for which a fast PGD step fits in GPU memory (CUDA only)."""
    best, batch = 0, start
    while batch <= limit:
        try:
            measure_model(name, device, batch, iters=1, warmup=0, workloads=("pgd20",), paths=("fast",),
                          log=lambda m: None)
            best, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def ratio_table(measurements: list[Measurement]) -> str:
    """Markdown table: per model and workload, plain and fast images/s, ratio, TFLOP/s, peak memory."""
    rows = ["| model | workload | batch (plain / fast) | FLOPs/img (G) | plain img/s | fast img/s | fast/plain | "
            "fast TFLOP/s | plain peak MiB | fast peak MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    index = {(m.model, m.workload, m.path): m for m in measurements}
    for (model, workload, path), m in index.items():
        if path != "fast":
            continue
        plain = index.get((model, workload, "plain"))
        ratio = f"{m.images_per_s / plain.images_per_s:.2f}x" if plain else "-"
        mem = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        batch = m.batch_size if plain is None or plain.batch_size == m.batch_size else \
            f"{plain.batch_size} / {m.batch_size}"
        rows.append(f"| {model} | {workload} | {batch} | {m.flops_per_image / 1e9:.3f} | "
                    f"{plain.images_per_s if plain else float('nan'):.1f} | {m.images_per_s:.1f} | {ratio} | "
                    f"{m.tflops:.3f} | {mem(plain.peak_memory_mib if plain else None)} | {mem(m.peak_memory_mib)} |")
    return "\n".join(rows)


def profile_fast_pgd_step(name: str, device: torch.device, batch_size: int, rows: int = 12) -> str:
    """Profiler table of one fast PGD step: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = create_model(name).to(device)
    engine, _ = accelerate(model, device)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    attack = PGD(engine, eps=EPS, alpha=ALPHA, steps=1)
    attack(x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        attack(x, y)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)
