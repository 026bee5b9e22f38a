"""AutoAttack through the reference implementation (Croce & Hein, ICML 2020; PyPI ``pyautoattack``, the code
RobustBench runs), with this project's guarantees around it.

What the wrapper adds to the reference:

* the model runs in eval mode during the attack and every submodule's mode is restored afterwards;
* inputs are checked (float NCHW in [0, 1]) and handed over contiguous (the reference calls ``.view`` on
  input gradients); ``precision='bf16'`` runs the model under bf16 autocast with fp32 logits;
* per-attack robust accuracy and seconds (``robust_accuracy_history``, ``seconds``), kept in a record beside
  the reference's resumable state, so that a resumed run reports every attack with its own time;
* the state is tied to what it measured: model weights, points, threat model, ε, version and seed; a state
  written for anything else is refused in one line instead of being reused;
* the returned points are checked: finite, inside [0, 1] and the ε-ball, and the reported robust accuracy
  re-measured on them.

Versions as published: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand``; ``custom`` runs
``attacks`` in the given order. Norms: ``Linf``, ``L2``, ``L1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RobnetsError
from ..io import atomic_path
from ..runtime import autocast_context, check_precision, eval_mode
from .base import Attack, check_inputs

VERSIONS = ("standard", "plus", "rand", "custom")
NORMS = ("Linf", "L2", "L1")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
BALL_TOLERANCE = 1e-5
STATE_FORMAT = "robnets-autoattack-state/2"
_LOG = logging.getLogger("robnets.autoattack").info
_INSTALL = "the reference AutoAttack is not installed: pip install pyautoattack (a dependency of robnets)"


def reference_module() -> Any:
    """The ``pyautoattack`` package, or one clear error saying how to install it."""
    try:
        import pyautoattack
    except ImportError:
        raise RobnetsError(_INSTALL) from None
    return pyautoattack


def reference_version() -> str:
    return f"pyautoattack {reference_module().__version__}"


class _Logits(nn.Module):
    """The model as the reference sees it: contiguous float logits, optionally from a bf16 forward pass."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        self.model = model
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_context(x.device, self.precision):
            logits = self.model(x.contiguous())
        return logits.float()


def model_digest(model: nn.Module) -> str:
    """sha256 over the model's state (names, shapes and values): what an AutoAttack state belongs to."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def points_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Relay(logging.Handler):
    """Passes the reference's warnings (its checks for randomized models, softmax outputs, ...) on."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        super().__init__(logging.WARNING)
        self.on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        if self.on_line is not None:
            self.on_line(record.getMessage())


class AutoAttack:
    """``AutoAttack(model, norm='Linf', eps=8/255, version='standard')``;
    ``x_adv = aa.run_standard_evaluation(x, y, bs=250, state_path=None)`` (or ``aa(x, y)``).

    The cascade is the reference's: each attack runs on the points still robust, in chunks of ``bs`` in index
    order, each chunk re-seeded as the reference does, so the result equals the reference's own
    ``run_standard_evaluation`` point for point. Running the chunks here (the reference's attacks, one
    chunk per call) makes the run resumable chunk by chunk: ``state_path`` (a safetensors file) records the
    robust flags, the adversarial points found so far and per-attack accuracy and seconds, tied to the model's
    weights, the points and the settings.

    After a run: ``aa.clean_accuracy``, ``aa.robust_accuracy`` (fractions), ``aa.robust_accuracy_history`` =
    [(attack, robust accuracy after it), ...], ``aa.seconds`` = {attack: seconds}, ``aa.resumed``, and per point
    ``aa.clean_flags`` / ``aa.robust_flags`` (bool, CPU). ``until='apgd-t'`` stops the cascade after that attack
    (the first stages of a version, exactly as the whole version runs them); a later call with the same state
    file and no ``until`` goes on with the rest.
    ``seed`` fixes the reference's random draws; ``device`` defaults to the input's; ``log`` takes one line
    per chunk and attack and the reference's warnings (default: the ``robnets.autoattack`` logger at INFO, which
    Python shows once logging is configured; ``verbose=True`` prints them to stderr as the reference's
    ``verbose`` does; ``None``: silent). ``progress(attack, points_done, points_to_attack, robust, n)`` is called
    when an attack starts and after each chunk (the command line draws its progress bars from it).
    """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 attacks: Sequence[str] | None = None, seed: int = 0, precision: str = "fp32",
                 device: str | torch.device | None = None,
                 log: Callable[[str], None] | None = _LOG, verbose: bool = False,
                 progress: Callable[[str, int, int, int, int], None] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise RobnetsError(f"AutoAttack needs an nn.Module, got {type(model).__name__}")
        if norm not in NORMS:
            raise RobnetsError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if version not in VERSIONS:
            raise RobnetsError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if not (isinstance(eps, (int, float)) and 0 < eps < float("inf")):
            raise RobnetsError(f"eps must be a finite number > 0, got {eps!r}")
        if version == "custom":
            if not attacks:
                raise RobnetsError(f"version 'custom' needs attacks=[...] from {', '.join(ATTACKS)}")
            unknown = [a for a in attacks if a not in ATTACKS]
            if unknown:
                raise RobnetsError(f"unknown AutoAttack attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
        elif attacks is not None:
            raise RobnetsError(f"attacks=... is for version='custom'; version {version!r} fixes its own attacks")
        self.model = model
        self.norm, self.eps, self.version, self.seed = norm, float(eps), version, int(seed)
        self.attacks = list(attacks) if attacks else None
        self.precision = check_precision(precision)
        self.device = torch.device(device) if device is not None else None
        if verbose:
            import sys

            def log(line: str, _inner=log) -> None:  # noqa: ANN001
                print(f"[autoattack] {line}", file=sys.stderr, flush=True)
                if _inner is not None and _inner is not _LOG:
                    _inner(line)
        self.log_fn = log
        self.progress = progress
        self.clean_accuracy: float | None = None
        self.robust_accuracy: float | None = None
        self.robust_accuracy_history: list[tuple[str, float]] = []
        self.seconds: dict[str, float] = {}
        self.resumed = False
        self.clean_flags: torch.Tensor | None = None
        self.robust_flags: torch.Tensor | None = None

    def describe(self) -> dict:
        return {"engine": reference_version(), "threat_model": self.norm, "eps": self.eps, "version": self.version,
                "attacks": self.attacks_to_run, "seed": self.seed, "precision": self.precision}

    @property
    def attacks_to_run(self) -> list[str]:
        return list(self._reference(nn.Identity(), "cpu").attacks_to_run)

    def _reference(self, model: nn.Module, device: torch.device | str) -> Any:
        aa = reference_module().AutoAttack(model, norm=self.norm, eps=self.eps, seed=self.seed, device=device,
                                           version=self.version, attacks=self.attacks)
        aa.verbose = False
        return aa

    def _log(self, line: str) -> None:
        if self.log_fn is not None:
            self.log_fn(line)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run_standard_evaluation(x, y)

    # ------------------------------------------------------------------ the run
    def run_standard_evaluation(self, x: torch.Tensor, y: torch.Tensor, bs: int = 250,
                                state_path: str | Path | None = None, until: str | None = None) -> torch.Tensor:
        y = check_inputs(x, y)
        if until is not None and until not in self.attacks_to_run:
            raise RobnetsError(f"until={until!r} is not an attack of this AutoAttack ({', '.join(self.attacks_to_run)})")
        if not isinstance(bs, int) or bs < 1:
            raise RobnetsError(f"bs (batch size) must be a positive integer, got {bs!r}")
        device = self.device or x.device
        x_in = x.detach().to(device, torch.float32).contiguous()
        y_in = y.detach().to(device)
        n = int(len(y_in))
        wrapped = _Logits(self.model, self.precision)
        path = Path(state_path) if state_path is not None else None
        key = self._key(x_in, y_in, bs)
        state = _State.load(path, key, x_in.cpu()) if path is not None and path.is_file() else None
        self.resumed = state is not None
        if state is not None and until is not None:
            later = self.attacks_to_run[self.attacks_to_run.index(until) + 1:]
            if any(a in state.done for a in later):
                raise RobnetsError(f"the AutoAttack state {path} has gone past {until} (it holds "
                                   f"{', '.join(state.done)}); its flags are not those after {until}: run without "
                                   f"until, or use another state file")
        relay = _Relay(self._log)
        logger = logging.getLogger("auto-attack")
        previous_propagate = logger.propagate
        logger.propagate = False
        logger.addHandler(relay)
        try:
            with eval_mode(self.model), torch.enable_grad():
                if state is None:
                    with torch.no_grad():
                        flags = torch.cat([(wrapped(x_in[i:i + bs]).argmax(1) == y_in[i:i + bs]).cpu()
                                           for i in range(0, n, bs)])
                    state = _State(key, flags.clone(), flags, x_in.detach().cpu().clone())
                    state.save(path)
                self._log(f"clean accuracy {state.clean.float().mean().item():.2%} (n={n}); attacks: "
                          f"{', '.join(self.attacks_to_run)} ({reference_version()})"
                          + (f"; resumed after {', '.join(state.done) or 'the clean pass'}" if self.resumed else ""))
                aa = self._reference(wrapped, device)
                for attack in self.attacks_to_run:
                    if attack not in state.done:
                        self._run_attack(aa, attack, x_in, y_in, bs, state, path)
                    if attack == until:
                        break
        finally:
            logger.removeHandler(relay)
            logger.propagate = previous_propagate
        x_adv = state.x_adv.to(device)
        with torch.no_grad(), eval_mode(self.model):
            robust = torch.cat([(wrapped(x_adv[i:i + bs]).argmax(1) == y_in[i:i + bs]).cpu() for i in range(0, n, bs)])
        self._check_points(x_in, x_adv)
        self.clean_accuracy = state.clean.float().mean().item()
        self.robust_accuracy = state.flags.float().mean().item()
        disagree = int((robust != state.flags).sum())
        if disagree and self.version != "rand":
            # a point at the decision boundary may flip between batch compositions (floating-point order);
            # more than that means a model whose outputs change from call to call
            if disagree > max(1, n // 1000):
                raise RobnetsError(f"AutoAttack found {self.robust_accuracy:.2%} robust accuracy but its returned "
                                   f"points give {robust.float().mean().item():.2%} ({disagree} points differ): the "
                                   f"model is not deterministic (use version='rand')")
            self._log(f"note: {disagree} of {n} points change their prediction when re-evaluated in other batches "
                      f"(floating-point order); the cascade's own verdict is kept")
        self.clean_flags, self.robust_flags = state.clean.clone(), state.flags.clone()
        self.robust_accuracy_history = [(r["attack"], r["robust"] / n) for r in state.rows]
        self.seconds = {r["attack"]: r["seconds"] for r in state.rows}
        return x_adv.to(x.device, x.dtype)

    def _run_attack(self, aa: Any, attack: str, x: torch.Tensor, y: torch.Tensor, bs: int, state: "_State",
                    path: Path | None) -> None:
        """One attack of the cascade on the points still robust, chunk by chunk (saving after each)."""
        if state.current != attack:  # a fresh attack: fix its points, as the reference does at its start
            state.current, state.todo, state.chunk, state.elapsed = attack, torch.nonzero(state.flags).flatten(), 0, 0.0
        aa.attacks_to_run = [attack]
        chunks = max(1, -(-len(state.todo) // bs))
        n = len(state.flags)
        if self.progress is not None:
            self.progress(attack, min(state.chunk * bs, len(state.todo)), len(state.todo), int(state.flags.sum()), n)
        while state.chunk * bs < len(state.todo):
            started = time.perf_counter()
            idx = state.todo[state.chunk * bs:(state.chunk + 1) * bs]
            dev_idx = idx.to(x.device)
            adv, _ = aa.run_standard_evaluation(x[dev_idx], y[dev_idx], batch_size=bs)
            with torch.no_grad():
                fooled = (aa.model(adv).argmax(1) != y[dev_idx]).cpu()
            state.flags[idx[fooled]] = False
            state.x_adv[idx[fooled]] = adv[fooled.to(adv.device)].detach().cpu()
            state.chunk += 1
            state.elapsed += time.perf_counter() - started
            state.save(path)
            self._log(f"{attack}: chunk {state.chunk}/{chunks}, {int(fooled.sum())} of {len(idx)} points fooled")
            if self.progress is not None:
                self.progress(attack, min(state.chunk * bs, len(state.todo)), len(state.todo), int(state.flags.sum()),
                              n)
        state.rows.append({"attack": attack, "robust": int(state.flags.sum()), "attacked": len(state.todo),
                           "seconds": round(max(state.elapsed, 1e-9), 3)})
        state.done.append(attack)
        state.current, state.todo, state.chunk, state.elapsed = None, torch.zeros(0, dtype=torch.long), 0, 0.0
        state.save(path)
        self._log(f"robust accuracy after {attack.upper()}: {state.flags.float().mean().item():.2%} "
                  f"({state.rows[-1]['seconds']:.1f} s)")

    def _key(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> dict[str, Any]:
        return {"model_sha256": model_digest(self.model), "points_sha256": points_digest(x, y), "n": int(len(y)),
                "norm": self.norm, "eps": self.eps, "version": self.version, "attacks": self.attacks_to_run,
                "seed": self.seed, "precision": self.precision, "bs": bs, "engine": reference_version()}

    def _check_points(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        if not bool(torch.isfinite(x_adv).all()):
            raise RobnetsError("AutoAttack returned non-finite points; the model's logits are probably NaN")
        if x_adv.min().item() < 0 or x_adv.max().item() > 1:
            raise RobnetsError("AutoAttack returned points outside [0, 1]")
        delta = (x_adv - x).flatten(1)
        size = {"Linf": delta.abs().amax(1), "L2": delta.norm(dim=1), "L1": delta.abs().sum(1)}[self.norm]
        if size.max().item() > self.eps * (1 + 1e-4) + BALL_TOLERANCE:
            raise RobnetsError(f"AutoAttack returned a point {size.max().item():.6g} from its image, outside the "
                               f"{self.norm} ball of radius {self.eps:.6g}")


class _State:
    """What a resumable AutoAttack run has done so far, as one safetensors file (tensors and JSON metadata)."""

    def __init__(self, key: dict, clean: torch.Tensor, flags: torch.Tensor, x_adv: torch.Tensor) -> None:
        self.key, self.clean, self.flags, self.x_adv = key, clean, flags, x_adv
        self.done: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.current: str | None = None
        self.todo = torch.zeros(0, dtype=torch.long)
        self.chunk, self.elapsed = 0, 0.0

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        from safetensors.torch import save_file

        meta = {"key": self.key, "done": self.done, "rows": self.rows, "current": self.current,
                "chunk": self.chunk, "elapsed": self.elapsed}
        broken = torch.nonzero(self.clean & ~self.flags).flatten()  # only these differ from the inputs
        tensors = {"clean": self.clean.to(torch.uint8), "flags": self.flags.to(torch.uint8), "broken": broken,
                   "x_broken": self.x_adv[broken].contiguous(), "todo": self.todo.contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "state": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path, key: dict, x: torch.Tensor) -> "_State":
        from safetensors import safe_open

        fix = f"delete {path} to start this AutoAttack run afresh, or choose another output folder"
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            meta = json.loads(header["state"])
        except Exception:  # noqa: BLE001
            raise RobnetsError(f"{path} is not a readable AutoAttack state (truncated by a crash, or not one); "
                               f"{fix}") from None
        if header.get("format") != STATE_FORMAT or not isinstance(meta, dict):
            raise RobnetsError(f"{path} is not an AutoAttack state of this version; {fix}")
        saved = meta.get("key") if isinstance(meta.get("key"), dict) else {}
        if saved != key:
            words = {"model_sha256": "model weights", "points_sha256": "points"}
            what = ", ".join(words.get(k, k) for k in key if saved.get(k) != key[k])
            raise RobnetsError(f"the AutoAttack state {path} was written for other {what}; use another output "
                               f"folder, or delete it")
        try:
            x_adv = x.clone()
            x_adv[tensors["broken"].long()] = tensors["x_broken"].to(x.dtype)
            state = cls(saved, tensors["clean"].bool(), tensors["flags"].bool(), x_adv)
            state.done, state.rows, state.current = list(meta["done"]), list(meta["rows"]), meta["current"]
            state.todo, state.chunk, state.elapsed = tensors["todo"].long(), int(meta["chunk"]), float(meta["elapsed"])
        except Exception:  # noqa: BLE001
            raise RobnetsError(f"{path} is not a readable AutoAttack state (damaged); {fix}") from None
        return state


# ---------------------------------------------------------------------- the reference's attacks one by one
class _ReferenceAttack(Attack):
    """One attack of the reference AutoAttack, with the torchattacks call shape and the usual guarantees."""

    name = ""

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, norm: str = "Linf", seed: int | None = 0,
                 precision: str = "fp32", **settings: Any) -> None:
        super().__init__(model, eps, precision=precision, seed=seed)
        if norm not in NORMS:
            raise RobnetsError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.threat_model = norm
        self.settings = settings
        reference_module()

    def describe(self) -> dict:
        return {**super().describe(), "engine": reference_version(), "attack": self.name, **self.settings}

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = _Logits(self.model, self.precision)
        attack = self._build(model, x.device)
        x_adv = attack.perturb(x.contiguous().float(), y)
        return x_adv.to(x.dtype).clamp_(0, 1)


class APGD(_ReferenceAttack):
    """APGD-CE (or ``loss='dlr'``), 100 iterations."""

    name = "apgd"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, loss: str = "ce", steps: int = 100,
                 restarts: int = 1, **kw: Any) -> None:
        super().__init__(model, eps, loss=loss, steps=steps, restarts=restarts, **kw)

    def _build(self, model: nn.Module, device: torch.device) -> Any:
        from pyautoattack.autopgd_base import APGDAttack

        s = self.settings
        return APGDAttack(model, n_iter=s["steps"], norm=self.threat_model, n_restarts=s["restarts"], eps=self.eps,
                          seed=self.seed or 0, loss=s["loss"], device=device)


class APGDT(_ReferenceAttack):
    """APGD on the targeted DLR loss over the 9 most likely other classes."""

    name = "apgd-t"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, steps: int = 100, target_classes: int = 9,
                 **kw: Any) -> None:
        super().__init__(model, eps, steps=steps, target_classes=target_classes, **kw)

    def _build(self, model: nn.Module, device: torch.device) -> Any:
        from pyautoattack.autopgd_base import APGDAttack_targeted

        s = self.settings
        return APGDAttack_targeted(model, n_iter=s["steps"], norm=self.threat_model, eps=self.eps,
                                   seed=self.seed or 0, n_target_classes=s["target_classes"], device=device)


class FAB(_ReferenceAttack):
    """FAB-T (targeted, 9 target classes) or FAB (``targeted=False``), 100 iterations."""

    name = "fab"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, fab_targeted: bool = True, steps: int = 100,
                 target_classes: int = 9, **kw: Any) -> None:
        super().__init__(model, eps, fab_targeted=fab_targeted, steps=steps, target_classes=target_classes, **kw)

    def _build(self, model: nn.Module, device: torch.device) -> Any:
        from pyautoattack.fab_pt import FABAttack_PT

        s = self.settings
        return FABAttack_PT(model, norm=self.threat_model, n_iter=s["steps"], eps=self.eps, seed=self.seed or 0,
                            targeted=s["fab_targeted"], n_target_classes=s["target_classes"], device=device)


class Square(_ReferenceAttack):
    """Square Attack: score-based black box (forward passes only), 5,000 queries by default."""

    name = "square"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, n_queries: int = 5000, **kw: Any) -> None:
        super().__init__(model, eps, n_queries=n_queries, **kw)

    def _build(self, model: nn.Module, device: torch.device) -> Any:
        from pyautoattack.square import SquareAttack

        return SquareAttack(model, p_init=0.8, n_queries=self.settings["n_queries"], eps=self.eps,
                            norm=self.threat_model, n_restarts=1, seed=self.seed or 0, device=device,
                            resc_schedule=False)
