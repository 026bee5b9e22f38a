"""Per-shape choice of separable-conv kernels: for each half the engine runs, time PyTorch's kernels (cuDNN)
and the fused Triton tilings on this GPU and keep the fastest, direction by direction.

Which implementation of a separable-conv half is fastest depends on the GPU, the dtype and the shape (channels,
resolution, stride, batch): no single Triton tiling wins everywhere, and on some shapes cuDNN beats them all. As
``triton.autotune`` does for one kernel, :class:`SepHalfTuner` times every candidate the first time a shape is
seen, on that shape and dtype with the layer's real weights, and from then on dispatches to the winner. The
forward and the input gradient are chosen separately (a Triton forward may run beside a cuDNN backward:
``TorchKernels`` stands for PyTorch's kernels in either direction), so the tuned engine is never slower than
PyTorch's kernels on a half by more than timing noise, and faster wherever a Triton tiling is. A Triton
candidate must beat PyTorch's kernels by :data:`MARGIN` to be chosen (noise must not flip a choice).

Choices are kept in memory and, for CUDA devices, in a JSON file (``ROBNETS_TUNING_CACHE``: a path, or ``off``;
default ``$XDG_CACHE_HOME/robnets/sepconv-tuning.json``), keyed by GPU name and the torch and Triton versions,
written atomically, so a second run starts tuned. Tuning never happens inside a CUDA-graph capture or a
``torch.compile`` trace: there an untuned shape runs PyTorch's kernels (the engine tunes eagerly before it
compiles, and the attack's graph warm-up runs before its capture).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..errors import RobnetsError
from ..io import write_json_atomic
from .fast_robnet import torch_sep_half
from .folding import FoldedConv, conv_of

# Candidates timed per direction (labels of KernelConfig, 'torch' for PyTorch's kernels). Each compiles for
# sm_90 without spills and with vector loads in its direction (results/triton-static.md); few, because each
# one compiles once per shape (about a second each) before it is timed. ROBNETS_TUNING_CANDIDATES=sweep
# times the sweep's tilings for each direction instead (sepconv_bench.SWEEP_FORWARD / SWEEP_BACKWARD).
FORWARD_CANDIDATES = ("torch", "p64-ci16-co64-w4-s2", "p32-ci16-co128-w4-s2", "p64-ci16-co256-w8-s2",
                      "p64-ci64-co64-w8-s1-split")
BACKWARD_CANDIDATES = ("torch", "p32-ci64-co32-w4-s1", "p64-ci32-co32-w4-s1", "p32-ci256-co32-w8-s1",
                       "p64-ci64-co64-w8-s1-split")
MARGIN = 0.05  # a Triton candidate must be at least 5 % faster than PyTorch's kernels to be chosen
CACHE_VERSION = 1

Timer = Callable[[Callable[[], object], torch.device], float]


def cuda_event_timer(fn: Callable[[], object], device: torch.device, iters: int = 10, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` on a CUDA device (CUDA events around ``iters`` calls, after ``warmup``)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1e3 / iters


def wall_clock_timer(fn: Callable[[], object], device: torch.device, iters: int = 3, warmup: int = 1) -> float:
    """Seconds per call by the wall clock (CPU, e.g. under the Triton interpreter)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


class HalfKey(NamedTuple):
    """What a choice depends on: device, dtype, shape and strides of the input, the conv geometry."""

    device: str
    dtype: str
    shape: tuple
    strides: tuple
    c_out: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    relu: bool
    bias: bool

    @classmethod
    def of(cls, x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool) -> HalfKey:
        depthwise = conv_of(depthwise)
        return cls(str(x.device), str(x.dtype).removeprefix("torch."), tuple(x.shape), tuple(x.stride()),
                   pointwise.conv.out_channels, tuple(depthwise.kernel_size), tuple(depthwise.stride),
                   tuple(depthwise.padding), tuple(depthwise.dilation), bool(relu),
                   pointwise.bn is not None or pointwise.conv.bias is not None)

    def to_text(self) -> str:
        """The key without its device, as the cache file stores it (the file groups entries by GPU)."""
        return json.dumps(list(self[1:]))

    @classmethod
    def from_text(cls, text: str, device: torch.device) -> HalfKey:
        dtype, shape, strides, c_out, kernel, stride, pad, dil, relu, bias = json.loads(text)
        return cls(str(device), str(dtype), tuple(shape), tuple(strides), int(c_out), tuple(kernel), tuple(stride),
                   tuple(pad), tuple(dil), bool(relu), bool(bias))


@dataclass(frozen=True)
class Candidate:
    """One timed call: a direction ('forward' / 'backward') run by one implementation (a label)."""

    direction: str
    label: str
    call: Callable[[], object]

    def __call__(self) -> object:
        return self.call()


@dataclass(frozen=True)
class HalfChoice:
    """The implementation chosen for each direction of one half (labels) and the times measured (us)."""

    forward: str
    backward: str
    forward_us: dict = field(default_factory=dict)   # label -> microseconds (failed candidates absent)
    backward_us: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "forward_us": self.forward_us,
                "backward_us": self.backward_us}

    @classmethod
    def from_dict(cls, data: dict) -> HalfChoice:
        return cls(str(data["forward"]), str(data["backward"]), dict(data.get("forward_us", {})),
                   dict(data.get("backward_us", {})))


def _pick(times: dict[str, float]) -> str:
    """The fastest label; a Triton label only if it beats PyTorch's kernels by MARGIN."""
    if not times:
        return "torch"
    best = min(times, key=times.get)
    if "torch" in times and best != "torch" and times[best] > (1.0 - MARGIN) * times["torch"]:
        return "torch"
    return best


def candidates_from_environment() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``ROBNETS_TUNING_CANDIDATES``: unset/``default`` (the lists above), ``sweep`` (the sweep's tilings for each
    direction: ten per direction) or a comma list of labels (both directions; ``torch`` is always a
    candidate)."""
    from .triton_sepconv import KernelConfig

    value = os.environ.get("ROBNETS_TUNING_CANDIDATES", "").strip()
    if value in ("", "default"):
        return FORWARD_CANDIDATES, BACKWARD_CANDIDATES
    if value == "sweep":  # each direction's sweep tilings (those compiling clean in it on sm_90)
        from .sepconv_bench import SWEEP_BACKWARD, SWEEP_FORWARD

        return ("torch",) + SWEEP_FORWARD, ("torch",) + SWEEP_BACKWARD
    else:
        labels = tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "torch")
        for label in labels:
            try:
                KernelConfig.from_label(label)
            except ValueError as exc:
                raise RobnetsError(f"ROBNETS_TUNING_CANDIDATES: {exc}") from None
    both = ("torch",) + tuple(labels)
    return both, both


def default_cache_path() -> Path | None:
    """Where CUDA tuning results persist: ``ROBNETS_TUNING_CACHE`` (``off``/``0``: nowhere), else under
    ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    value = os.environ.get("ROBNETS_TUNING_CACHE", "").strip()
    if value.lower() in ("0", "off", "false", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robnets" / "sepconv-tuning.json"


def _device_signature(device: torch.device) -> str:
    """GPU model and library versions: a tuning result holds for these only."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} | torch {torch.__version__} | triton {triton_version}"


class SepHalfTuner:
    """A separable-conv half (the engine's ``SepHalf`` signature) that dispatches each shape to the fastest
    implementation measured on it, per direction. Candidates default to ``ROBNETS_TUNING_CANDIDATES`` (see
    :func:`candidates_from_environment`). ``timer(candidate, device) -> seconds`` (a :class:`Candidate`: its
    direction, label and the call to time) defaults to CUDA events (wall clock off CUDA); tests inject their
    own. ``cache_path=None`` keeps the choices in memory only."""

    def __init__(self, *, forward_candidates: Sequence[str] | None = None,
                 backward_candidates: Sequence[str] | None = None, timer: Timer | None = None,
                 cache_path: Path | str | None = None, log: Callable[[str], None] | None = None) -> None:
        if forward_candidates is None or backward_candidates is None:
            env_forward, env_backward = candidates_from_environment()
            forward_candidates = env_forward if forward_candidates is None else forward_candidates
            backward_candidates = env_backward if backward_candidates is None else backward_candidates
        self.forward_candidates = tuple(forward_candidates)
        self.backward_candidates = tuple(backward_candidates)
        for labels in (self.forward_candidates, self.backward_candidates):
            if "torch" not in labels:
                raise ValueError("the candidates must include 'torch' (PyTorch's kernels, the fallback)")
        self.timer = timer
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.log = log or (lambda message: None)
        self.persist_device_types = ("cuda",)  # timings elsewhere (CPU interpreter) are not worth keeping
        self._choices: dict[HalfKey, HalfChoice] = {}
        self._configs: dict[str, object] = {}  # label -> KernelConfig / TorchKernels
        self._loaded: set[str] = set()
        self._warned = False

    # ------------------------------------------------------------------------------------------ dispatch

    def __call__(self, x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool) -> torch.Tensor:
        key = HalfKey.of(x, depthwise, pointwise, relu)
        choice = self._choices.get(key)
        if choice is None:
            if torch.compiler.is_compiling():  # nothing to time while tracing (FastRobNet tunes before it compiles)
                return torch_sep_half(x, depthwise, pointwise, relu)
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                self._warn_untuned(key)
                return torch_sep_half(x, depthwise, pointwise, relu)
            choice = self.tune(x, depthwise, pointwise, relu)
        if choice.forward == "torch" and choice.backward == "torch":
            return torch_sep_half(x, depthwise, pointwise, relu)
        from .triton_sepconv import triton_sep_half

        configs = self._configs  # a plain dict: torch.compile traces the lookup (labels resolved when chosen)
        return triton_sep_half(x, depthwise, pointwise, relu, forward_config=configs[choice.forward],
                               backward_config=configs[choice.backward])

    def _remember(self, key: HalfKey, choice: HalfChoice) -> HalfChoice:
        from .triton_sepconv import _config

        for label in (choice.forward, choice.backward):
            if label not in self._configs:
                self._configs[label] = _config(label)
        self._choices[key] = choice
        return choice

    def _warn_untuned(self, key: HalfKey) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"separable-conv half {key.shape} was not tuned before a CUDA-graph capture or torch.compile "
                          "trace: it runs PyTorch's kernels (run the engine once eagerly first)", stacklevel=3)

    # -------------------------------------------------------------------------------------------- tuning

    def choice(self, x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool) -> HalfChoice | None:
        """The choice made for this call's shape, if any (loads the device's cached choices first)."""
        self._load(x.device)
        return self._choices.get(HalfKey.of(x, depthwise, pointwise, relu))

    def tune(self, x: torch.Tensor, depthwise: nn.Conv2d | FoldedConv, pointwise: FoldedConv, relu: bool) -> HalfChoice:
        """Time every candidate on this call's shape (synthetic data, the layer's weights) and keep the fastest
        per direction. Returns the (possibly cached) choice."""
        cached = self.choice(x, depthwise, pointwise, relu)
        if cached is not None:
            return cached
        from .triton_sepconv import TORCH_KERNELS, _config, _forward, _input_grad, depthwise_weight, pointwise_weights

        key = HalfKey.of(x, depthwise, pointwise, relu)
        timer = self.timer or (cuda_event_timer if x.is_cuda else wall_clock_timer)
        conv = conv_of(depthwise)
        stride, pad, dil = int(conv.stride[0]), int(conv.padding[0]), int(conv.dilation[0])
        g = torch.Generator(device=x.device).manual_seed(0)
        with torch.no_grad():
            xs = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
            xs.copy_(torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32))
            pw, bias = pointwise_weights(xs, pointwise)
            out = _forward(xs, depthwise_weight(xs, depthwise, TORCH_KERNELS), pw, bias, stride, pad, dil, relu,
                           TORCH_KERNELS)
            grad_out = torch.randn(out.shape, generator=g, device=x.device, dtype=torch.float32).to(out.dtype)
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
            times: dict[str, dict[str, float]] = {"forward": {}, "backward": {}}
            for direction, labels in (("forward", self.forward_candidates), ("backward", self.backward_candidates)):
                for label in labels:
                    cfg = _config(label)
                    dw = depthwise_weight(xs, depthwise, cfg)  # each candidate with its own layout, as it runs
                    if direction == "forward":
                        call = partial(_forward, xs, dw, pw, bias, stride, pad, dil, relu, cfg)
                    else:
                        call = partial(_input_grad, grad_out, xs, dw, pw, stride, pad, dil, relu, cfg)
                    fn = Candidate(direction, label, call)
                    try:
                        seconds = float(timer(fn, x.device))
                    except Exception as exc:  # noqa: BLE001 - a tiling that does not launch here is skipped
                        self.log(f"  tuning {key.shape} {direction} {label}: failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:80] if str(exc) else ''})")
                        continue
                    times[direction][label] = round(seconds * 1e6, 2)
        choice = self._remember(key, HalfChoice(_pick(times["forward"]), _pick(times["backward"]), times["forward"],
                                                times["backward"]))
        self.log(f"  tuned {key.shape} -> {key.c_out} stride {key.stride[0]}{' relu' if relu else ''} {key.dtype}: forward "
                 f"{choice.forward} ({times['forward'].get(choice.forward, float('nan')):.1f} us, torch "
                 f"{times['forward'].get('torch', float('nan')):.1f}), backward {choice.backward} "
                 f"({times['backward'].get(choice.backward, float('nan')):.1f} us, torch "
                 f"{times['backward'].get('torch', float('nan')):.1f})")
        self._save(x.device)
        return choice

    # --------------------------------------------------------------------------------------- persistence

    def _read_file(self) -> dict:
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return data

    def _load(self, device: torch.device) -> None:
        if self.cache_path is None or device.type not in self.persist_device_types:
            return
        signature = _device_signature(device)
        if signature in self._loaded:
            return
        self._loaded.add(signature)
        for text, entry in self._read_file().get("devices", {}).get(signature, {}).items():
            try:
                key = HalfKey.from_text(text, device)
                if key not in self._choices:
                    self._remember(key, HalfChoice.from_dict(entry))
            except (KeyError, TypeError, ValueError):
                continue  # an entry this version cannot read is simply re-tuned

    def _save(self, device: torch.device) -> None:
        if self.cache_path is None or device.type not in self.persist_device_types:
            return
        signature = _device_signature(device)
        data = self._read_file() or {"version": CACHE_VERSION, "devices": {}}
        entries = data.setdefault("devices", {}).setdefault(signature, {})
        for key, choice in self._choices.items():
            if key.device == str(device):
                entries[key.to_text()] = choice.to_dict()
        try:
            write_json_atomic(self.cache_path, data)  # a concurrent reader sees the old or the new file
        except OSError as exc:
            self.log(f"  tuning cache not written ({exc}); choices kept in memory")

    # ---------------------------------------------------------------------------------------------- report

    def choices_as_dicts(self) -> list[dict]:
        """Every choice with its key spelled out (JSON-ready)."""
        return [{**key._asdict(), **choice.to_dict()} for key, choice in self._choices.items()]

    def table(self) -> str:
        """Markdown: per tuned shape, the chosen implementation of each direction with its time and PyTorch's."""
        rows = ["| input (N, C, H, W) | C_out | stride | ReLU | dtype | forward | us (torch) | backward | us (torch) |",
                "|---|---:|---:|---|---|---|---:|---|---:|"]
        for key, c in self._choices.items():
            f, b = c.forward_us, c.backward_us
            rows.append(f"| {key.shape} | {key.c_out} | {key.stride[0]} | {'yes' if key.relu else 'no'} | {key.dtype} | {c.forward} | "
                        f"{f.get(c.forward, float('nan')):.1f} ({f.get('torch', float('nan')):.1f}) | {c.backward} | "
                        f"{b.get(c.backward, float('nan')):.1f} ({b.get('torch', float('nan')):.1f}) |")
        return "\n".join(rows)


_DEFAULT_TUNER: SepHalfTuner | None = None


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # progress, kept out of stdout's tables


def default_tuner() -> SepHalfTuner:
    """The process-wide tuner (one set of choices shared by every engine), persisted at
    :func:`default_cache_path`."""
    global _DEFAULT_TUNER
    if _DEFAULT_TUNER is None:
        _DEFAULT_TUNER = SepHalfTuner(cache_path=default_cache_path(), log=_log_to_stderr)
    return _DEFAULT_TUNER
