"""Adversarial training loop: original recipe and fast methods, exact resume, DDP, validation, best weights.

A run folder holds ``config.yaml`` (resolved), ``train.log``, ``metrics.jsonl`` (one line per epoch),
``state.pt`` (tensors-only resume state, written atomically), ``best.safetensors`` (best robust validation
accuracy) and ``final.safetensors`` (weights with metadata). Interrupting (Ctrl-C, SIGTERM from slurm)
saves the state of the step just finished; ``--resume RUN_DIR`` continues exactly: model, optimizer,
EMA, epoch, position in the data order, the partial epoch's metrics; augmentation and attack randomness
are derived from (seed, epoch, step, rank), so resumed batches equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import PGD
from ..config import Config, build_model, save_config
from ..data import load_dataset, resolve_data_root
from ..data.arrays import ImageArrayDataset
from ..errors import RobnetsError
from ..io import atomic_path, folder_lock, write_text_atomic
from ..models import RobNet
from ..models.checkpoint import save_weights
from ..runtime import derive_seed, eval_mode, progress_bar, resolve_device
from ..distributed import DistContext
from .ema import ModelEMA
from .loader import GpuBatchLoader
from .methods import SINGLE_STEP, MethodSettings, make_inputs, training_loss
from .schedule import build_optimizer, learning_rate, scaled_lr, set_learning_rate

STATE_FILE = "state.pt"


@dataclass
class TrainResult:
    folder: Path
    completed: bool
    epoch: int
    step: int
    best_val_robust: float | None
    history: list[dict] = field(default_factory=list)
    stopped_by: int | None = None  # the signal (SIGINT/SIGTERM) that stopped the run, state saved


@dataclass
class _Progress:
    """Where a run stands: the position (epoch, step within it), the running sums of this epoch on this rank
    (loss, correct, count), the best robust validation accuracy, the overfitting probe's best, finished epochs."""

    epoch: int = 0
    step: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    best: float | None = None
    probe_best: float | None = None
    history: list[dict] = field(default_factory=list)


class _StepInterrupted(Exception):
    """A stop signal arrived inside an interruptible region (a training step's attack, forward and backward)."""


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves and exits. Inside :meth:`interruptible` the signal also ends the work
    under way at once (:class:`_StepInterrupted`), so a stop never waits for a long step to finish."""

    def __init__(self) -> None:
        self.raised = False
        self.signum: int | None = None  # the signal that stopped the loop (exit status 128 + signum)
        self._previous: dict[int, Any] = {}
        self._armed = False

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        if self.raised:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.raised = True
        self.signum = signum
        if self._armed:
            self._armed = False
            raise _StepInterrupted

    @contextlib.contextmanager
    def interruptible(self, enabled: bool = True):  # noqa: ANN201
        """A region a stop signal may cut short (raising :class:`_StepInterrupted` inside it)."""
        if self.raised and enabled:
            raise _StepInterrupted
        self._armed = enabled
        try:
            yield
        finally:
            self._armed = False

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train the model a :class:`Config` describes; see the module docstring for the run folder."""

    def __init__(self, config: Config, *, output_dir: str | Path | None = None, data_dir: str | Path | None = None,
                 resume: str | Path | None = None, ctx: DistContext | None = None, progress: bool = True,
                 log_to_stderr: bool = True) -> None:
        self.config = config
        self.ctx = ctx or DistContext()
        self.progress = progress and self.ctx.is_main
        self.log_to_stderr = log_to_stderr
        t = config.train
        device = resolve_device(t.device)
        self.device = self.ctx.device(device.type)
        self.settings = MethodSettings(
            name=t.method, eps=config.attack.eps, step_size=config.attack.step_size, steps=t.attack_steps,
            fgsm_step=t.fgsm_step, nfgsm_noise=t.nfgsm_noise, nfgsm_step=t.nfgsm_step, trades_beta=t.trades_beta,
            precision=t.precision, attack_train_mode=t.attack_train_mode)
        self.batch_size = t.batch_size or config.data.batch_size
        self.accumulate = t.accumulate
        if self.accumulate < 1:
            raise RobnetsError(f"train.accumulate must be at least 1, got {self.accumulate}")
        self.global_batch = self.batch_size * self.ctx.world_size * self.accumulate
        self.base_lr = scaled_lr(t.lr, self.global_batch, t.reference_batch_size) if t.scale_lr else t.lr
        self.lr_min = t.lr_min * (self.base_lr / t.lr) if t.lr else t.lr_min
        warm = t.warmup_lr if t.warmup_lr is not None else None
        self.warmup_lr = warm * (self.base_lr / t.lr) if (warm is not None and t.lr) else warm
        self.total_epochs = t.warmup_epochs + t.epochs

        resume_state = None
        if resume is not None:
            resume = Path(resume)
            state_path = resume / STATE_FILE if resume.is_dir() else resume
            if not state_path.is_file():
                raise RobnetsError(f"nothing to resume: {state_path} not found (give the run folder of an "
                                   f"interrupted run)")
            try:
                resume_state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is one error line
                raise RobnetsError(f"cannot read {state_path} ({type(exc).__name__}); it is truncated, corrupt or "
                                   f"not a training state: start the run again, or restore the file") from None
            if not isinstance(resume_state, dict):
                raise RobnetsError(f"{state_path} is not a robnets training state (a {type(resume_state).__name__})")
            self.folder = state_path.parent
        else:
            self.folder = Path(output_dir) if output_dir else Path(config.output_dir) / (
                f"train-{config.name}-{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self._resume_state = resume_state
        self._data_dir = data_dir
        self._loss_alarm: dict[int, float] = {}  # epoch -> the largest step loss above the explosion limit

    # ------------------------------------------------------------------ helpers
    def log(self, message: str, level: int = logging.INFO) -> None:
        """A line in train.log and through logging (warnings always; other lines with ``log_to_stderr``)."""
        if not self.ctx.is_main:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.log_to_stderr or level >= logging.WARNING:
            logging.getLogger("robnets.training").log(level, line)
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def _data(self) -> tuple[ImageArrayDataset, ImageArrayDataset | None]:
        c, t = self.config, self.config.train
        root = resolve_data_root(self._data_dir, c.data.root)
        train = load_dataset(c.data.dataset, "train", root)
        c.data.root = str(root)  # saved with the run (as given): its resume finds the same data
        if not isinstance(train, ImageArrayDataset):
            raise RobnetsError(f"training supports the 32x32 array datasets (cifar10, cifar100, svhn), not "
                               f"{c.data.dataset}")
        n = len(train)
        val = None
        if t.val_size > 0:
            if t.val_size >= n:
                raise RobnetsError(f"train.val_size={t.val_size} leaves no training data ({n} images)")
            train, val = train.hold_out(t.val_size)
        if t.train_size is not None:
            train = train.subset(t.train_size)
        return train, val

    def _lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        t = self.config.train
        position = epoch + (step / steps_per_epoch if t.lr_per_step else 0.0)
        return learning_rate(position, lr=self.base_lr, lr_min=self.lr_min, epochs=t.epochs,
                             warmup_epochs=t.warmup_epochs, warmup_lr=self.warmup_lr)

    def _engine(self, model: nn.Module, *, training_attacks: bool = False) -> nn.Module:
        """The model attacks run on: the fast eval engine where it applies. ``train.compile`` (or
        ROBNETS_COMPILE=1) compiles the one that crafts the training attacks (fixed batch shape); validation
        and the overfitting probe (other shapes, few calls) never compile. (``train.compile`` also compiles
        the weight update's forward and backward: see :meth:`run`.)"""
        if self.config.train.fast_attack and not self.settings.attack_train_mode and isinstance(model, RobNet):
            from ..acceleration import accelerate

            # None: ROBNETS_COMPILE decides; False: never (validation, probe)
            compiled = (True if self.config.train.compile else None) if training_attacks else False
            return accelerate(model, self.device, compile=compiled)[0]
        return model

    def _validate(self, model: nn.Module, val: ImageArrayDataset) -> dict[str, float]:
        from ..evaluation import evaluate

        c = self.config
        engine = self._engine(model)
        attack = PGD(engine, eps=c.attack.eps, alpha=c.attack.step_size, steps=c.train.val_attack_steps, seed=0)
        results = evaluate(engine, val, {"clean": None, f"pgd{c.train.val_attack_steps}": attack},
                           device=self.device, batch_size=max(self.batch_size, 64), progress=False)
        return {"val_clean": results[0].accuracy, "val_robust": results[1].accuracy}

    def _probe_batch_accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """PGD-10 accuracy on a fixed training batch: collapses under catastrophic overfitting."""
        c = self.config
        engine = self._engine(model)
        attack = PGD(engine, eps=c.attack.eps, alpha=c.attack.eps / 4, steps=10, seed=1)
        x_adv = attack(x, y)
        with torch.no_grad(), eval_mode(engine):
            return 100.0 * (engine(x_adv).argmax(1) == y).float().mean().item()

    def _save_state(self, path_state: dict) -> None:
        if not self.ctx.is_main:
            return
        with atomic_path(self.folder / STATE_FILE) as tmp:
            torch.save(path_state, tmp)

    def _save_weights(self, model: nn.Module, name: str, extra: dict) -> Path:
        c = self.config
        dtype = torch.float16 if c.train.save_dtype == "fp16" else None
        return save_weights(model, self.folder / name, model_name=c.model.name, dataset=c.data.dataset,
                            threat_model=c.attack.norm, eps=c.attack.eps, dtype=dtype, extra_metadata=extra)

    def _check_resume_state(self, model: nn.Module, state: dict, data_sha256: str) -> None:
        """One error line when a saved state cannot continue this config (keys, shapes, what it holds) or was
        made on other data."""
        from ..models.checkpoint import check_state_dict_matches

        saved = state.get("data_sha256")
        if isinstance(saved, str) and saved != data_sha256:
            raise RobnetsError(f"--resume {self.folder}: the run started on other training data (sha256 "
                               f"{saved[:12]}..., now {data_sha256[:12]}...); pass the same --data-dir and data "
                               f"settings as the run began with")

        needed = ("model", "optimizer", "epoch", "step", "sums", "rng_cpu")
        missing = [k for k in needed if k not in state]
        if missing or not isinstance(state.get("model"), dict):
            raise RobnetsError(f"--resume {self.folder}: {STATE_FILE} lacks {', '.join(missing) or 'the model'}; "
                               f"it is not a robnets training state")
        hint = "resume with the saved config.yaml (drop --set overrides that change the model)"
        try:
            check_state_dict_matches(model, state["model"], f"{STATE_FILE} of {self.folder}", self.config.model.name)
        except RobnetsError as exc:
            raise RobnetsError(f"--resume: {exc}; {hint}") from None

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train (or resume) to the end or to a stop signal; the run folder is locked meanwhile."""
        with folder_lock(self.folder, enabled=self.ctx.is_main):
            return self._run()

    def _run(self) -> TrainResult:
        """The stages of a run, in order."""
        train, val = self._data()
        self.num_classes = train.num_classes
        self.data_sha256 = train.digest() + (val.digest() if val is not None else "")
        loader = self._loader(train)
        model, optimizer, ema = self._build()
        progress = self._restore(model, optimizer, ema)
        self._open_folder(progress, len(loader))
        net, train_net = self._update_network(model)
        writer = self._tensorboard()
        probe = self._probe(train)
        self._log_start(model, train, val)
        engine = self._engine(model, training_attacks=True)  # follows the weights as they change
        with _StopFlag() as stop:
            interrupted = self._train_epochs(loader, model, net, train_net, engine, optimizer, ema, progress, stop,
                                             val, probe, writer)
        self._finish(model, ema, progress, interrupted)
        if writer is not None:
            writer.close()
        return TrainResult(self.folder, progress.epoch >= self.total_epochs, progress.epoch, progress.step,
                           progress.best, progress.history, stopped_by=stop.signum if interrupted else None)

    # ------------------------------------------------------------------ stages
    def _loader(self, train: ImageArrayDataset) -> GpuBatchLoader:
        c, ctx = self.config, self.ctx
        loader = GpuBatchLoader(train, self.batch_size * self.accumulate, device=self.device, shuffle=True,
                                drop_last=True, augment=True, crop_padding=4, flip=True,
                                cutout_length=c.data.cutout_length if c.data.cutout else 0, seed=c.seed,
                                rank=ctx.rank, world_size=ctx.world_size)
        if len(loader) < 1:
            raise RobnetsError(f"{len(train)} training images make no batch of {self.global_batch}; lower "
                               f"the batch size or raise train.train_size")
        return loader

    def _build(self) -> tuple[nn.Module, torch.optim.Optimizer, ModelEMA | None]:
        t = self.config.train
        model = build_model(self.config, self.device)
        model = model.to(memory_format=torch.channels_last)  # faster depthwise convs on CPU and GPU
        optimizer = build_optimizer(model, lr=self.base_lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                    no_wd=t.no_wd)
        ema = ModelEMA(model, t.ema_decay) if t.ema_decay else None
        return model, optimizer, ema

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None) -> _Progress:
        """Where the run stands: the start, or the saved state (checked before anything in the folder changes)."""
        progress = _Progress()
        s = self._resume_state
        if s is None:
            return progress
        self._check_resume_state(model, s, self.data_sha256)
        model.load_state_dict(s["model"])
        try:
            optimizer.load_state_dict(s["optimizer"])
        except (ValueError, KeyError) as exc:
            raise RobnetsError(f"--resume {self.folder}: the saved optimizer state does not fit this config "
                               f"({exc}); resume without overrides that change the model or optimizer") from None
        if ema is not None and "ema" in s:
            ema.load_state_dict(s["ema"])
        progress.epoch, progress.step = int(s["epoch"]), int(s["step"])
        progress.best = s.get("best_val_robust")
        progress.probe_best = s.get("probe_best")
        progress.sums = [float(v) for v in s["sums"]]
        progress.history = json.loads(s.get("history", "[]"))
        torch.set_rng_state(s["rng_cpu"])
        return progress

    def _open_folder(self, progress: _Progress, steps_per_epoch: int) -> None:
        """The resolved config (a resume may override), and metrics.jsonl holding exactly the finished epochs."""
        if self.ctx.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._resume_state is None:  # the log first: a folder with config.yaml but no train.log is no run
                self.log(f"training run folder {self.folder}")
            save_config(self.config, self.folder / "config.yaml")
        self.ctx.barrier()
        if self._resume_state is not None:
            self.log(f"resuming {self.folder} at epoch {progress.epoch}, step {progress.step}/{steps_per_epoch}")
            if self.ctx.is_main:
                write_text_atomic(self.folder / "metrics.jsonl",
                                  "".join(json.dumps(h) + "\n" for h in progress.history))

    def _update_network(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(DDP wrapper or the model, what the weight update runs: compiled by train.compile, sharing the
        model's parameters)."""
        t = self.config.train
        net = model
        if self.ctx.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        train_net = net
        if t.compile:
            from ..acceleration import compile_backend_from_environment, compile_for_training

            train_net = compile_for_training(net)
            backend = compile_backend_from_environment()
            attacks_too = t.fast_attack and not self.settings.attack_train_mode and isinstance(model, RobNet)
            self.log("train.compile: the weight update's forward/backward"
                     + (" and the attack engine" if attacks_too else "")
                     + f" run through torch.compile ({backend}); the first steps compile (minutes)")
        return net, train_net

    def _tensorboard(self):  # noqa: ANN202
        if not (self.config.train.tensorboard and self.ctx.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RobnetsError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(str(self.folder / "tensorboard"))

    def _probe(self, train: ImageArrayDataset) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A fixed training batch whose PGD-10 accuracy reveals catastrophic overfitting (single-step methods)."""
        t = self.config.train
        size = min(len(train), t.co_probe_size)
        return train.batch(0, size) if t.method in SINGLE_STEP and size > 0 else None

    def _log_start(self, model: nn.Module, train: ImageArrayDataset, val: ImageArrayDataset | None) -> None:
        c, t = self.config, self.config.train
        self.log(f"training {c.model.name} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
                 f"{c.data.dataset} ({len(train)} images, {len(val) if val else 0} held out) with {t.method}, "
                 f"eps {c.attack.eps:.5f}, global batch {self.global_batch} over {self.ctx.world_size} process(es), "
                 f"lr {self.base_lr:.5g}{' (scaled to the batch)' if t.scale_lr else ''}, {self.total_epochs} "
                 f"epochs, {self.device}"
                 f"{f' with {torch.get_num_threads()} CPU thread(s)' if self.device.type == 'cpu' else ''}, "
                 f"{t.precision}")

    def _train_epochs(self, loader, model, net, train_net, engine, optimizer, ema, progress, stop, val, probe,  # noqa: ANN001
                      writer) -> bool:  # noqa: ANN001
        """Epochs until the end, a stop signal, train.max_steps or catastrophic overfitting (train.stop_on_co);
        True when stopped mid-run (state saved)."""
        t = self.config.train
        steps_per_epoch = len(loader)
        steps_done = 0
        while progress.epoch < self.total_epochs:
            loader.set_epoch(progress.epoch)
            start_time, first_step = time.perf_counter(), progress.step
            bar = progress_bar(total=steps_per_epoch, initial=progress.step,
                               desc=f"epoch {progress.epoch + 1}/{self.total_epochs}", enabled=self.progress,
                               leave=False, dynamic_ncols=True)
            for x, y in loader.iter_from(progress.step):
                lr = self._lr(progress.epoch, progress.step, steps_per_epoch)
                try:
                    loss = self._train_step(x, y, model, net, train_net, engine, optimizer, ema, progress, lr, stop)
                except _StepInterrupted:  # the step was cut short and undone: save the last finished one
                    self._save_state(self._state(model, optimizer, ema, progress))
                    bar.close()
                    self.log(f"stop signal: the step under way (epoch {progress.epoch}, step {progress.step}) was "
                             f"cut short; the state after the last finished step is saved")
                    return True
                steps_done += 1
                bar.update(1)
                sums = progress.sums
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}%", lr=f"{lr:.4g}")
                if not math.isfinite(loss):
                    message = (f"training diverged (loss {loss}) at epoch {progress.epoch + 1}, step {progress.step}; "
                               f"lower train.lr")
                    self.log(f"ERROR: {message}")
                    raise RobnetsError(message)
                self._watch_loss(loss, progress)
                want_stop = stop.raised or (t.max_steps is not None and steps_done >= t.max_steps)
                periodic = t.checkpoint_every_steps and progress.step % t.checkpoint_every_steps == 0
                if want_stop or (periodic and progress.step < steps_per_epoch):
                    self._save_state(self._state(model, optimizer, ema, progress))
                if want_stop:
                    bar.close()
                    return True
            bar.close()
            self._end_epoch(model, optimizer, ema, progress, val, probe, writer, steps_per_epoch,
                            time.perf_counter() - start_time, progress.step - first_step)
            history = progress.history
            if self.ctx.is_main and history and history[-1].get("catastrophic_overfitting") and t.stop_on_co:
                self.log("stopping: catastrophic overfitting (train.stop_on_co)")
                break
        return False

    def _train_step(self, x, y, model, net, train_net, engine, optimizer, ema, progress, lr,  # noqa: ANN001
                    stop: _StopFlag | None = None) -> float:  # noqa: ANN001
        """One optimizer step over a (global) batch in train.accumulate micro-batches; returns the last loss.

        A stop signal during the attacks, forwards and backwards (one process; DDP ranks finish their step
        together) cuts the step short: what it changed (BatchNorm statistics, the running sums, the random
        state, gradients) is restored, and :class:`_StepInterrupted` leaves the state of the last finished step."""
        ctx = self.ctx
        set_learning_rate(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        micro = list(zip(x.chunk(self.accumulate), y.chunk(self.accumulate)))
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        sums, rng = list(progress.sums), torch.get_rng_state()
        region = stop.interruptible(not ctx.enabled) if stop is not None else contextlib.nullcontext()
        try:
            with region:
                loss = self._micro_batches(micro, model, net, train_net, engine, progress)
        except _StepInterrupted:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
            progress.sums[:] = sums
            torch.set_rng_state(rng)
            optimizer.zero_grad(set_to_none=True)
            raise
        optimizer.step()
        if ema is not None:
            ema.update(model)
        progress.step += 1
        return loss.item()

    def _micro_batches(self, micro, model, net, train_net, engine, progress) -> torch.Tensor:  # noqa: ANN001
        """Attacks, forwards and backwards of one step's micro-batches (gradients accumulate); the last loss."""
        c, ctx = self.config, self.ctx
        for m, (xm, ym) in enumerate(micro):
            # randomness of shard (rank, micro-batch): equal for DDP rank r and micro-batch r
            generator = torch.Generator(device=self.device).manual_seed(
                derive_seed(c.seed, progress.epoch, progress.step, ctx.rank * self.accumulate + m))
            attack_model = model if self.settings.attack_train_mode else engine
            if self.settings.attack_train_mode:
                model.train()
            x_in = make_inputs(attack_model, xm, ym, self.settings, generator)
            model.train()
            sync = contextlib.nullcontext() if (m == len(micro) - 1 or not ctx.enabled) else net.no_sync()
            with sync:
                loss, logits = training_loss(train_net, xm, x_in, ym, self.settings)
                (loss / len(micro)).backward()
            progress.sums[0] += loss.item() * ym.shape[0]
            progress.sums[1] += (logits.argmax(1) == ym).sum().item()
            progress.sums[2] += ym.shape[0]
        return loss

    def _watch_loss(self, loss: float, progress: _Progress) -> None:
        """Warn once per epoch, in the log and the epoch's record, when a step's loss is far above chance
        (5 x ln(classes)): the run is exploding (a too-high learning rate, most often) and its numbers mean little."""
        limit = 5 * math.log(max(2, getattr(self, "num_classes", 10)))
        if loss > limit and self._loss_alarm.get(progress.epoch) is None:
            message = (f"WARNING: training loss {loss:.3g} at epoch {progress.epoch + 1}, step {progress.step} is far "
                       f"above chance ({limit / 5:.2f}): the run is exploding; lower train.lr (or raise warmup)")
            self.log(message, logging.WARNING)
        if loss > limit:
            self._loss_alarm[progress.epoch] = max(loss, self._loss_alarm.get(progress.epoch, 0.0))

    def _end_epoch(self, model, optimizer, ema, progress, val, probe, writer, steps_per_epoch, seconds,  # noqa: ANN001
                   steps_here) -> None:  # noqa: ANN001
        """Reduce the epoch's metrics over ranks, validate (keeping best.safetensors), probe for catastrophic
        overfitting, record the epoch, save the state."""
        t, ctx = self.config.train, self.ctx
        epoch = progress.epoch
        loss_sum, correct, count = ctx.all_reduce_sum(progress.sums, self.device)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "lr": self._lr(epoch, 0, steps_per_epoch),
            "train_loss": loss_sum / count, "train_adv_acc": 100 * correct / count,
            "seconds": round(seconds, 2),
            # images this process trained on in this epoch since it started (a resumed epoch counts less)
            "images_per_s": round(steps_here * self.global_batch / seconds, 1)}
        if self._loss_alarm.get(epoch) is not None:
            record["loss_warning"] = f"exploding: a step loss of {self._loss_alarm[epoch]:.3g}, far above chance"
        if ctx.is_main:
            eval_model = ema.module if ema is not None else model
            if val is not None and ((epoch + 1) % t.val_every == 0 or epoch + 1 == self.total_epochs):
                record.update(self._validate(eval_model, val))
                if progress.best is None or record["val_robust"] > progress.best:
                    progress.best = record["val_robust"]
                    self._save_weights(eval_model, "best.safetensors",
                                       {"epoch": epoch + 1, "val_robust": progress.best,
                                        "val_clean": record["val_clean"], "method": t.method})
                    record["best"] = True
            if probe is not None:
                self._check_overfitting(model, probe, record, progress)
            progress.history.append(record)
            with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        writer.add_scalar(key, value, epoch + 1)
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in record.items() if k != "epoch")
            self.log(f"epoch {epoch + 1}/{self.total_epochs}: {shown}")
        progress.epoch, progress.step, progress.sums = epoch + 1, 0, [0.0, 0.0, 0.0]
        self._save_state(self._state(model, optimizer, ema, progress))
        ctx.barrier()

    def _check_overfitting(self, model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor], record: dict,
                           progress: _Progress) -> None:
        t = self.config.train
        px, py = probe[0].to(self.device), probe[1].to(self.device)
        acc = self._probe_batch_accuracy(model, px, py)
        record["probe_pgd10_acc"] = acc
        if progress.probe_best is not None and acc < progress.probe_best - 100 * t.co_drop:
            record["catastrophic_overfitting"] = True
            self.log(f"WARNING catastrophic overfitting: PGD-10 accuracy on a training batch fell from "
                     f"{progress.probe_best:.1f}% to {acc:.1f}% at epoch {record['epoch']}; best.safetensors keeps "
                     f"the weights from before; try nfgsm, a smaller fgsm_step or smaller eps")
        progress.probe_best = acc if progress.probe_best is None else max(progress.probe_best, acc)

    def _finish(self, model: nn.Module, ema: ModelEMA | None, progress: _Progress, interrupted: bool) -> None:
        if interrupted:
            self.log(f"stopped at epoch {progress.epoch}, step {progress.step}; state saved: resume with "
                     f"--resume {self.folder}")
        elif self.ctx.is_main:
            final_model = ema.module if ema is not None else model
            path = self._save_weights(final_model, "final.safetensors",
                                      {"epochs": progress.epoch, "method": self.config.train.method,
                                       "best_val_robust": progress.best})
            best = progress.best
            self.log(f"done: {path}" + (f" (best robust validation accuracy {best:.2f}%)" if best is not None else ""))

    def _state(self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None,
               progress: _Progress) -> dict:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": progress.epoch,
                 "step": progress.step, "best_val_robust": progress.best, "probe_best": progress.probe_best,
                 "sums": torch.tensor(progress.sums, dtype=torch.float64), "history": json.dumps(progress.history),
                 "rng_cpu": torch.get_rng_state(), "data_sha256": self.data_sha256}
        if ema is not None:
            state["ema"] = ema.state_dict()
        return state
