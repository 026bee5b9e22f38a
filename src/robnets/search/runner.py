"""``robnets search``: one-shot adversarial supernet training, then sample, fine-tune, score and rank.

Phases (all resumable, the run folder holds everything):

1. **Supernet.** Adversarial training (``search.method``) of the :class:`Supernet` with a random architecture
   per batch, drawn from the distribution the candidates come from (``search.sampling``, ``search.live_only``),
   so that every scored architecture is one of those the shared weights were trained for (the same one on
   every rank: it is drawn from ``(seed, step)``). An inherited supernet (``search.supernet_weights``) must
   have been trained on the same per-layer distribution. Under torchrun or
   slurm this is DDP over all ranks. ``supernet_state.pt`` (tensors only, written atomically) is saved
   every ``checkpoint_every_steps`` and on SIGINT/SIGTERM; the final weights go to ``supernet.safetensors``.
2. **Candidates.** ``num_samples`` distinct architectures drawn by ``search.sampling`` from ``(seed)``,
   listed in ``candidates.json``; candidate i belongs to rank ``i % world_size``.
3. **FSP filter** (``fsp_filter``; the paper's cell-free search): each candidate inherits the supernet
   weights, its BatchNorm statistics are re-estimated, and its deep-cell FSP loss between clean and PGD
   inputs is measured (raw and relative, see :mod:`.fsp`); candidates whose relative loss is above
   ``fsp_threshold`` (default: outside the lowest ``fsp_keep`` fraction) are rejected before any fine-tuning.
4. **Score.** Each kept candidate: inherit weights, re-calibrate BatchNorm, fine-tune adversarially for
   ``finetune_steps`` (the same batches for every candidate), measure clean and PGD accuracy on
   ``eval_size`` held-out training images (never the test set), and per-cell FSP losses. Each result is
   appended to ``scores.rank<R>.jsonl`` and flushed as soon as it is known; a restarted search skips
   every candidate already scored by any rank.
5. **Report** (rank 0): ``architectures.json`` / ``.csv`` (every sampled architecture with its scores, the
   data users asked the original authors for), ``ranking.md``, ``analysis.json`` (Pearson and Kendall
   correlations of density, convolution placement and FSP loss with robustness), PNG plots, and the best
   architecture as ``best_genotype.txt`` (canonical string; ``robnets train --genotype FILE`` trains it)
   and ``best_codes.json`` (the original 2-bit code lists).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import PGD
from ..config import Config, save_config
from ..data import load_dataset, resolve_data_root
from ..data.arrays import ImageArrayDataset
from ..errors import RobnetsError
from ..io import append_jsonl, atomic_path, folder_lock, read_jsonl, sha256_file, write_json_atomic, write_text_atomic
from ..models.genotype import Genotype
from ..runtime import derive_seed, progress_bar, resolve_device
from ..distributed import DistContext
from ..training.loader import GpuBatchLoader
from ..training.methods import MethodSettings, make_inputs, training_loss
from ..training.schedule import build_optimizer, set_learning_rate
from . import analysis
from .fsp import cell_fsp_both, deep_cell_loss
from .space import SearchSpace, shard, structure
from .supernet import Supernet, recalibrate_batchnorm

SUPERNET_STATE = "supernet_state.pt"
SUPERNET_WEIGHTS = "supernet.safetensors"
SCORING_KEY = "scoring_key.json"


@dataclass
class SearchResult:
    folder: Path
    completed: bool  # False when stopped early (stop_after, a signal): resume with the same folder
    records: list[dict]
    best: dict | None
    stopped_by: int | None = None  # the signal (SIGINT/SIGTERM) that stopped the search, results saved


def _cosine(lr: float, step: int, total: int) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Search:
    """Run the search a :class:`Config` (its ``search`` section) describes, in ``output_dir``."""

    def __init__(self, config: Config, *, output_dir: str | Path | None = None, data_dir: str | Path | None = None,
                 ctx: DistContext | None = None, progress: bool = True, log_to_stderr: bool = True) -> None:
        self.config = config
        self.s = config.search
        self.ctx = ctx or DistContext()
        self.progress = progress and self.ctx.is_main
        self.log_to_stderr = log_to_stderr
        self.device = self.ctx.device(resolve_device(self.s.device).type)
        self.folder = Path(output_dir) if output_dir else Path(config.output_dir) / (
            f"search-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self._data_dir = data_dir
        self.settings = MethodSettings(name=self.s.method, eps=config.attack.eps, step_size=config.attack.step_size,
                                       steps=config.train.attack_steps, fgsm_step=config.train.fgsm_step,
                                       nfgsm_noise=config.train.nfgsm_noise, nfgsm_step=config.train.nfgsm_step,
                                       trades_beta=config.train.trades_beta, precision=self.s.precision)
        # The supernet's BatchNorm statistics mix every sampled architecture, so its attacks use batch
        # statistics (train mode, as the original RobNets trained); candidates, re-calibrated, attack in eval mode.
        self.supernet_settings = dataclasses.replace(self.settings, attack_train_mode=True)
        self.space = SearchSpace(layers=self.s.layers, steps=self.s.steps, share=self.s.share, mode=self.s.sampling,
                                 density_min=self.s.density_min, density_max=self.s.density_max,
                                 conv_budget=self.s.conv_budget, live_only=self.s.live_only)

    # ------------------------------------------------------------------ helpers
    def log(self, message: str, all_ranks: bool = False) -> None:
        if not (self.ctx.is_main or all_ranks):
            return
        prefix = f"[rank {self.ctx.rank}] " if self.ctx.enabled else ""
        line = f"[{time.strftime('%H:%M:%S')}] {prefix}{message}"
        if self.log_to_stderr:
            logging.getLogger("robnets.search").info(line)
        with open(self.folder / "search.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def _data(self) -> tuple[ImageArrayDataset, ImageArrayDataset]:
        c, s = self.config, self.s
        root = resolve_data_root(self._data_dir, c.data.root)
        train = load_dataset(c.data.dataset, "train", root)
        c.data.root = str(root)  # saved with the search (as given): its resume finds the same data
        if not isinstance(train, ImageArrayDataset):
            raise RobnetsError(f"search supports the 32x32 array datasets (cifar10, cifar100, svhn), not "
                               f"{c.data.dataset}")
        n = len(train)
        if not 0 < s.val_size < n:
            raise RobnetsError(f"search.val_size={s.val_size} must lie between 1 and {n - 1} (training images)")
        if s.eval_size > s.val_size or s.fsp_size > s.val_size:
            raise RobnetsError(f"search.eval_size ({s.eval_size}) and search.fsp_size ({s.fsp_size}) cannot "
                               f"exceed search.val_size ({s.val_size})")
        train, val = train.hold_out(s.val_size)
        if s.train_size is not None:
            train = train.subset(s.train_size)
        return train, val

    def _loader(self, train: ImageArrayDataset, rank: int = 0, world_size: int = 1) -> GpuBatchLoader:
        if len(train) < self.s.batch_size * world_size:
            raise RobnetsError(f"{len(train)} training images are fewer than one global batch "
                               f"({self.s.batch_size} x {world_size}); lower search.batch_size")
        return GpuBatchLoader(train, self.s.batch_size, device=self.device, shuffle=True, drop_last=True,
                              augment=True, crop_padding=4, flip=True, seed=self.config.seed, rank=rank,
                              world_size=world_size)

    def _generator(self, *parts: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(derive_seed(self.config.seed, *parts))
        return g

    def _train_step(self, model: nn.Module, attack_model: nn.Module, optimizer: torch.optim.Optimizer,
                    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                    settings: MethodSettings | None = None) -> float:
        settings = settings or self.settings
        model.train()
        x_in = make_inputs(attack_model, x, y, settings, generator)
        loss, _ = training_loss(model, x, x_in, y, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    # ------------------------------------------------------------------ phase 1: supernet
    def build_supernet(self, num_classes: int) -> Supernet:
        s = self.s
        torch.manual_seed(derive_seed(self.config.seed, 0))  # the same initial weights on every rank and run
        return Supernet(C=s.C, num_classes=num_classes, layers=s.layers, steps=s.steps, share=s.share).to(self.device)

    def train_supernet(self, supernet: Supernet, train: ImageArrayDataset, stop) -> bool:  # noqa: ANN001
        """Train (or finish training) the supernet; True when done, False when interrupted."""
        from safetensors.torch import load_file, save_file

        s, ctx = self.s, self.ctx
        weights = self.folder / SUPERNET_WEIGHTS
        if s.supernet_weights and not weights.is_file():
            if ctx.is_main:
                self._adopt_supernet(supernet, Path(s.supernet_weights), weights)
            ctx.barrier()
        if weights.is_file():
            supernet.load_state_dict(load_file(weights, device=str(self.device)))
            self.log(f"supernet already trained: loaded {weights}")
            return True
        loader = self._loader(train, ctx.rank, ctx.world_size)
        per_epoch = len(loader)
        total = per_epoch * s.supernet_epochs
        if s.supernet_max_steps is not None:
            total = min(total, s.supernet_max_steps)
        optimizer = build_optimizer(supernet, lr=s.supernet_lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                    no_wd=True)
        step = 0
        state_path = self.folder / SUPERNET_STATE
        if state_path.is_file():
            state = torch.load(state_path, map_location=self.device, weights_only=True)
            supernet.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step = int(state["step"])
            self.log(f"resuming supernet training at step {step}/{total}")
        model: nn.Module = supernet
        if ctx.enabled:
            model = nn.parallel.DistributedDataParallel(
                supernet, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True, broadcast_buffers=False)
        self.log(f"supernet: {sum(p.numel() for p in supernet.parameters()):,} parameters, "
                 f"{'cell-based' if s.share else 'cell-free'}, C={s.C}, {s.layers} cells; {s.method} training for "
                 f"{total} steps of {s.batch_size} x {ctx.world_size} images, a random architecture per step "
                 f"({self._distribution(self.space.describe())})")

        def save() -> None:
            if ctx.is_main:
                with atomic_path(state_path) as tmp:
                    torch.save({"model": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": torch.tensor(step)}, tmp)

        bar = progress_bar(total=total, initial=step, desc="supernet", enabled=self.progress, dynamic_ncols=True)
        loss_sum, count, started = 0.0, 0, time.perf_counter()
        while step < total:
            epoch, within = divmod(step, per_epoch)
            loader.set_epoch(epoch)
            for x, y in loader.iter_from(within):
                supernet.set_architecture(self.space.sample(random.Random(derive_seed(self.config.seed, 1, step))))
                set_learning_rate(optimizer, _cosine(s.supernet_lr, step, total))
                loss_sum += self._train_step(model, supernet, optimizer, x, y, self._generator(2, step, ctx.rank),
                                             self.supernet_settings)
                count += 1
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / count:.3f}")
                if s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0 and step < total:
                    save()
                if stop.raised or step >= total:
                    break
            if stop.raised:
                break
        bar.close()
        if stop.raised and step < total:
            save()
            self.log(f"stopped at supernet step {step}/{total}; state saved: run the same command to resume")
            return False
        if ctx.is_main:
            with atomic_path(weights) as tmp:
                save_file({k: v.detach().contiguous().cpu() for k, v in supernet.state_dict().items()}, str(tmp),
                          metadata={"format": "robnets-supernet", "config": json.dumps(supernet.config),
                                    "steps": str(total), "method": s.method,
                                    "sampling": json.dumps(self.space.describe())})
            state_path.unlink(missing_ok=True)
        ctx.barrier()
        self.log(f"supernet trained: {total} steps, mean loss {loss_sum / max(count, 1):.3f}, "
                 f"{time.perf_counter() - started:.0f} s")
        return True

    def _adopt_supernet(self, supernet: Supernet, source: Path, target: Path) -> None:
        """Copy a trained supernet of the same macro structure into the run folder (checked first)."""
        import shutil

        metadata = self._check_supernet_file(supernet, source)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        trained = "cell-based" if json.loads(metadata["config"]).get("share") else "cell-free"
        self.log(f"supernet inherited from {source} (sha256 {sha256_file(target)}, trained {trained}, "
                 f"{metadata.get('steps', '?')} steps)")

    def _scoring_key(self, train: ImageArrayDataset, val: ImageArrayDataset) -> dict[str, Any]:
        """What the scores in this folder depend on: the settings that change a score, and the data (a
        digest of the held-out images and the training set's size)."""
        s, a = self.s, self.config.attack
        fields = ("C", "layers", "steps", "share", "supernet_epochs", "supernet_max_steps", "supernet_lr", "method",
                  "batch_size", "momentum", "weight_decay", "precision", "num_samples", "sampling", "density_min",
                  "density_max", "conv_budget", "live_only", "bn_recalibration_batches", "finetune_steps", "finetune_lr",
                  "finetune_seed", "eval_size", "eval_attack_steps", "fsp", "fsp_size", "fsp_filter", "fsp_keep",
                  "fsp_threshold")
        return {"search": {f: getattr(s, f) for f in fields}, "eps": a.eps, "step_size": a.step_size,
                "seed": self.config.seed, "dataset": self.config.data.dataset, "train_images": len(train),
                "held_out_sha256": val.digest()}

    def _check_scoring_key(self, key: dict[str, Any]) -> None:
        path = self.folder / SCORING_KEY
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise RobnetsError(f"{path} is damaged; resume {self.folder} with an intact copy, or use a new "
                               f"folder") from None
        if saved != json.loads(json.dumps(key)):
            flat = {**saved.get("search", {}), **{k: v for k, v in saved.items() if k != "search"}}
            now = {**key["search"], **{k: v for k, v in key.items() if k != "search"}}
            what = ", ".join(k for k in now if flat.get(k) != now[k]) or "settings"
            raise RobnetsError(f"the scores in {self.folder} were made with other {what}; resuming would mix them "
                               f"with new ones: resume with the saved config.yaml and the same data, or use a "
                               f"new folder")

    def _check_folder_fits(self, supernet: Supernet) -> None:
        """One error line when the run folder holds a supernet or candidates this config would not make."""
        from ..models.checkpoint import check_state_dict_matches

        hint = f"resume {self.folder} with its saved config.yaml (drop --set overrides), or use a new folder"
        weights, state = self.folder / SUPERNET_WEIGHTS, self.folder / SUPERNET_STATE
        try:
            if weights.is_file():
                self._check_supernet_file(supernet, weights)
            elif state.is_file():
                try:
                    saved = torch.load(state, map_location="cpu", weights_only=True)
                    tensors, _ = saved["model"], int(saved["step"])
                except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: one line
                    raise RobnetsError(f"cannot read {state} ({type(exc).__name__}): it is truncated or corrupt; "
                                       f"delete it to train the supernet from the start") from None
                check_state_dict_matches(supernet, tensors, str(state), "supernet")
        except RobnetsError as exc:
            raise RobnetsError(f"{exc}; {hint}") from None
        listed = self.folder / "candidates.json"
        if listed.is_file():
            try:
                names = [c["genotype"] for c in json.loads(listed.read_text(encoding="utf-8"))]
            except (ValueError, TypeError, KeyError):
                raise RobnetsError(f"{listed} is damaged (not a list of candidates); {hint}") from None
            if names != [str(g) for g in self.candidates()]:
                raise RobnetsError(f"this config draws other candidates than {listed} lists, so earlier scores "
                                   f"would be mixed with new ones; {hint}")

    @staticmethod
    def _distribution(d: dict[str, Any]) -> str:
        text = d["mode"]
        if d["mode"] == "density":
            text += f" {d['density_min']:g}-{d['density_max']:g}"
        elif d["mode"] == "budget":
            text += f" of {d['conv_budget']} convolutions"
        return text + (", fully live cells only" if d["live_only"] else ", any cell")

    def _check_supernet_file(self, supernet: Supernet, source: Path) -> dict[str, str]:
        """The metadata of ``source`` if it is a supernet of ``supernet``'s structure, trained on the per-layer
        distribution of architectures this search scores; else one error line."""
        from safetensors import safe_open

        hint = "set search.supernet_weights to the supernet.safetensors of a search with the same C, layers and steps"
        if not source.is_file():
            raise RobnetsError(f"search.supernet_weights: {source} does not exist; {hint}")
        try:
            with safe_open(str(source), framework="pt") as handle:
                metadata = handle.metadata() or {}
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            theirs = json.loads(metadata.get("config", "null"))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error line
            raise RobnetsError(f"search.supernet_weights: {source} is not a readable supernet file ({exc}); "
                               f"{hint}") from None
        if metadata.get("format") != "robnets-supernet" or not isinstance(theirs, dict):
            raise RobnetsError(f"search.supernet_weights: {source} is not a robnets supernet "
                               f"(no 'robnets-supernet' metadata); {hint}")
        ours = supernet.config
        differ = [f"{k}={theirs.get(k)!r} (this search: {ours[k]!r})" for k in ours
                  if k != "share" and theirs.get(k) != ours[k]]
        expected = {k: tuple(v.shape) for k, v in supernet.state_dict().items()}
        if differ or shapes != expected:
            what = ", ".join(differ) if differ else "its tensors do not match this supernet's keys and shapes"
            raise RobnetsError(f"search.supernet_weights: {source} has {what}; {hint}")
        # supernets written before the sampling was recorded were trained on uniform codes, any cell
        trained = json.loads(metadata.get("sampling") or json.dumps(
            {"mode": "uniform", "density_min": 0.0, "density_max": 1.0, "conv_budget": None, "live_only": False}))
        scored = self.space.describe()
        if trained != scored:
            raise RobnetsError(f"{source} was trained on architectures drawn as '{self._distribution(trained)}' but "
                               f"this search scores '{self._distribution(scored)}'; inherited weights are only meaningful for what they "
                               f"were trained on: set search.sampling / density_min / density_max / conv_budget / "
                               f"live_only as the supernet's search did, or train a supernet for this search "
                               f"(drop search.supernet_weights)")
        return metadata

    # ------------------------------------------------------------------ phases 2-4: candidates
    def candidates(self) -> list[Genotype]:
        return self.space.sample_unique(self.s.num_samples, derive_seed(self.config.seed, 3))

    def _inherit(self, supernet: Supernet, genotype: Genotype, loader: GpuBatchLoader) -> nn.Module:
        net = supernet.extract(genotype)
        n = min(self.s.bn_recalibration_batches, len(loader))
        recalibrate_batchnorm(net, (loader.get_batch(i, epoch=0)[0] for i in range(n)))
        return net

    def _pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        return PGD(model, eps=c.attack.eps, alpha=c.attack.step_size, steps=self.s.eval_attack_steps, seed=0)(x, y)

    def _fsp(self, net: nn.Module, val: ImageArrayDataset) -> tuple[list[float], list[float]]:
        x, y = val.batch(0, self.s.fsp_size)
        x, y = x.to(self.device), y.to(self.device)
        return cell_fsp_both(net, x, self._pgd(net, x, y))

    def fsp_screen(self, index: int, genotype: Genotype, supernet: Supernet, loader: GpuBatchLoader,
                   val: ImageArrayDataset) -> dict:
        torch.manual_seed(derive_seed(self.config.seed, 4, index))
        raw, relative = self._fsp(self._inherit(supernet, genotype, loader), val)
        return {"index": index, "genotype": str(genotype), "fsp_inherited": raw,
                "fsp_inherited_deep": deep_cell_loss(raw), "fsp_inherited_relative": relative,
                "fsp_inherited_relative_deep": deep_cell_loss(relative)}

    def score(self, index: int, genotype: Genotype, supernet: Supernet, loader: GpuBatchLoader,
              val: ImageArrayDataset) -> dict:
        """Inherit, re-calibrate, fine-tune, evaluate one candidate; the record written for it."""
        from ..acceleration import accelerate
        from ..evaluation import evaluate

        s, c = self.s, self.config
        started = time.perf_counter()
        # finetune_seed 0 keeps the original streams; another seed draws other batches and attack noise
        variant = (s.finetune_seed,) if s.finetune_seed else ()
        torch.manual_seed(derive_seed(c.seed, 4, index, *variant))
        net = self._inherit(supernet, genotype, loader)
        losses = []
        if s.finetune_steps > 0:
            optimizer = build_optimizer(net, lr=s.finetune_lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                        no_wd=True)
            # the training attacks run in eval mode on the fast engine, as in `robnets train` (same function,
            # ~20 % faster fine-tuning on CPU); it follows the weights as they change
            attacker = accelerate(net, self.device)[0]
            per_epoch = len(loader)
            first_epoch = 1000 * (1 + s.finetune_seed)
            for k in range(s.finetune_steps):
                epoch, within = divmod(k, per_epoch)
                x, y = loader.get_batch(within, epoch=first_epoch + epoch)  # the same batches for every candidate
                set_learning_rate(optimizer, _cosine(s.finetune_lr, k, s.finetune_steps))
                losses.append(self._train_step(net, attacker, optimizer, x, y,
                                               self._generator(5, index, k, *variant)))
        net.eval()
        engine = accelerate(net, self.device)[0]
        eval_set = val.subset(s.eval_size)
        attack = PGD(engine, eps=c.attack.eps, alpha=c.attack.step_size, steps=s.eval_attack_steps, seed=0)
        clean, adv = evaluate(engine, eval_set, {"clean": None, f"pgd{s.eval_attack_steps}": attack},
                              device=self.device, batch_size=max(s.batch_size, 100), progress=False)
        record: dict[str, Any] = {
            "index": index, "genotype": str(genotype), "codes": genotype.to_codes(), **structure(genotype),
            "params": sum(p.numel() for p in net.parameters()),
            # what the effective cells hold (edges that carry no information dropped): equal for fully live cells
            "effective_params": sum(p.numel() for p in supernet.extract(genotype.effective()).parameters()),
            "clean": clean.accuracy, "adv": adv.accuracy, "gap": clean.accuracy - adv.accuracy, "n": adv.n,
            "attack": f"pgd{s.eval_attack_steps}", "finetune_steps": s.finetune_steps, "finetune_seed": s.finetune_seed,
            "finetune_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        }
        if s.fsp:
            raw, relative = self._fsp(net, val)
            record.update(fsp=raw, fsp_deep=deep_cell_loss(raw), fsp_relative=relative,
                          fsp_relative_deep=deep_cell_loss(relative))
        record.update(seconds=round(time.perf_counter() - started, 2), rank=self.ctx.rank)
        return record

    # ------------------------------------------------------------------ the run
    def run(self) -> SearchResult:
        """Train the supernet and score the candidates (or resume); the search folder is locked meanwhile."""
        with folder_lock(self.folder, enabled=self.ctx.is_main):
            return self._run()

    def _run(self) -> SearchResult:
        from ..training.trainer import _StopFlag

        c, s, ctx = self.config, self.s, self.ctx
        train, val = self._data()
        supernet = self.build_supernet(train.num_classes)
        # everything is checked before anything is written, so a resume that does not fit changes nothing
        if s.supernet_weights and not (self.folder / SUPERNET_WEIGHTS).is_file():
            self._check_supernet_file(supernet, Path(s.supernet_weights))
        self._check_folder_fits(supernet)
        key = self._scoring_key(train, val)
        self._check_scoring_key(key)
        if ctx.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_config(c, self.folder / "config.yaml")
            if not (self.folder / SCORING_KEY).is_file():
                write_json_atomic(self.folder / SCORING_KEY, key)
        ctx.barrier()
        self.log(f"search in {self.folder}: {s.num_samples} {s.sampling} samples of a "
                 f"{'cell-based' if s.share else 'cell-free'} space ({self.space.size():.3g} architectures), "
                 f"{len(train)} training / {len(val)} held-out images, {ctx.world_size} process(es), {self.device}"
                 f"{f' with {torch.get_num_threads()} CPU thread(s)' if self.device.type == 'cpu' else ''}")
        with _StopFlag() as stop:
            if not self.train_supernet(supernet, train, stop):
                return SearchResult(self.folder, False, [], None, stopped_by=stop.signum)
            supernet.eval()
            candidates = self.candidates()
            if ctx.is_main:
                write_json_atomic(self.folder / "candidates.json",
                                  [{"index": i, "genotype": str(g)} for i, g in enumerate(candidates)])
            loader = self._loader(train)
            mine = shard(len(candidates), ctx.rank, ctx.world_size)
            processed = 0

            def budget_left() -> bool:
                return not stop.raised and (s.stop_after is None or processed < s.stop_after)

            kept = set(range(len(candidates)))
            if s.fsp_filter:
                done = {r["index"] for r in read_jsonl(sorted(self.folder.glob("fsp.rank*.jsonl")))}
                todo = [i for i in mine if i not in done]
                for i in progress_bar(todo, desc="FSP screen", enabled=self.progress, dynamic_ncols=True):
                    if not budget_left():
                        break
                    append_jsonl(self.folder / f"fsp.rank{ctx.rank}.jsonl",
                                 self.fsp_screen(i, candidates[i], supernet, loader, val))
                    processed += 1
                screened_now = {r["index"] for r in read_jsonl(sorted(self.folder.glob("fsp.rank*.jsonl")))}
                if self._all_stopped(any(i not in screened_now for i in todo)):
                    return self._stopped(stop.signum)
                ctx.barrier()
                kept = self._fsp_kept(len(candidates))

            done = {r["index"] for r in read_jsonl(self._score_files())}
            todo = [i for i in mine if i in kept and i not in done]
            if done:
                self.log(f"resuming: {len(done)} candidates already scored", all_ranks=True)
            bar = progress_bar(todo, desc="candidates", enabled=self.progress, dynamic_ncols=True)
            started = time.perf_counter()
            for n, i in enumerate(bar, 1):
                if not budget_left():
                    break
                record = self.score(i, candidates[i], supernet, loader, val)
                append_jsonl(self.folder / f"scores.rank{ctx.rank}.jsonl", record)
                processed += 1
                bar.set_postfix(clean=f"{record['clean']:.1f}", adv=f"{record['adv']:.1f}")
                left = (time.perf_counter() - started) / n * (len(todo) - n)
                self.log(f"candidate {i}: clean {record['clean']:.1f}%, adv {record['adv']:.1f}% "
                         f"({record['seconds']:.0f} s); {n}/{len(todo)} done here, about {left / 60:.0f} min left",
                         all_ranks=True)
            bar.close()
            scored_now = {r["index"] for r in read_jsonl(self._score_files())}
            if self._all_stopped(any(i not in scored_now for i in todo)):
                return self._stopped(stop.signum)
        ctx.barrier()
        if not ctx.is_main:
            return SearchResult(self.folder, True, [], None)
        return self.report(candidates, kept)

    def rescore(self, count: int, finetune_seed: int) -> dict | None:
        with folder_lock(self.folder, enabled=self.ctx.is_main):
            return self._rescore(count, finetune_seed)

    def _rescore(self, count: int, finetune_seed: int) -> dict | None:
        """The noise floor of a finished search: score ``count`` of its candidates again with another
        fine-tuning seed and compare the two scorings (rank correlation with bootstrap intervals).

        The candidates are spread evenly over the first scoring's ranking. Each result is appended to
        ``rescore-seed<S>.jsonl`` as it comes (an interrupted re-scoring resumes); the comparison goes to
        ``noise_floor.json`` and ``noise_floor.png``. Returns the comparison, or None when interrupted."""
        from safetensors.torch import load_file

        from ..training.trainer import _StopFlag

        s = self.s
        if finetune_seed == s.finetune_seed:
            raise RobnetsError(f"--finetune-seed {finetune_seed} is the seed the search was scored with; "
                               f"choose another to measure the noise floor")
        weights = self.folder / SUPERNET_WEIGHTS
        scored = {r["index"]: r for r in read_jsonl(self._score_files())}
        if not weights.is_file() or not scored:
            raise RobnetsError(f"{self.folder} holds no finished search (supernet.safetensors and scores); "
                               f"run or resume the search first")
        candidates = self.candidates()
        listed = json.loads((self.folder / "candidates.json").read_text(encoding="utf-8"))
        if [c["genotype"] for c in listed] != [str(g) for g in candidates]:
            raise RobnetsError(f"the candidates of {self.folder} differ from those its config.yaml draws; "
                               f"was the config changed after the search?")
        if not 3 <= count:
            raise RobnetsError(f"--candidates {count}: at least 3 are needed for a rank correlation")
        ranked = analysis.rank(list(scored.values()))
        if len(ranked) < count:
            raise RobnetsError(f"--candidates {count}: the search scored only {len(ranked)} candidates")
        picks = sorted({ranked[round(i * (len(ranked) - 1) / (count - 1))]["index"] for i in range(count)})
        other = Search(dataclasses.replace(self.config, search=dataclasses.replace(s, finetune_seed=finetune_seed)),
                       output_dir=self.folder, data_dir=self._data_dir, progress=self.progress,
                       log_to_stderr=self.log_to_stderr)
        train, val = self._data()
        supernet = self.build_supernet(train.num_classes)
        supernet.load_state_dict(load_file(weights, device=str(self.device)))
        supernet.eval()
        loader = self._loader(train)
        path = self.folder / f"rescore-seed{finetune_seed}.jsonl"
        done = {r["index"] for r in read_jsonl([path])}
        todo = [i for i in picks if i not in done]
        self.log(f"re-scoring {len(picks)} candidates with fine-tuning seed {finetune_seed} "
                 f"({len(picks) - len(todo)} already done)")
        self.stop_signal: int | None = None
        with _StopFlag() as stop:
            for i in progress_bar(todo, desc="re-score", enabled=self.progress, dynamic_ncols=True):
                if stop.raised:
                    break
                append_jsonl(path, other.score(i, candidates[i], supernet, loader, val))
            self.stop_signal = stop.signum
        again = {r["index"]: r for r in read_jsonl([path])}
        if any(i not in again for i in picks):
            self.log(f"re-scoring stopped; run the same command to continue ({len(again)} of {len(picks)} done)")
            return None
        first = [scored[i] for i in picks]
        second = [again[i] for i in picks]
        diffs = [b["adv"] - a["adv"] for a, b in zip(first, second)]
        floor = {
            "n": len(picks), "finetune_seeds": [s.finetune_seed, finetune_seed], "indices": picks,
            "adv": analysis.correlation([r["adv"] for r in first], [r["adv"] for r in second]),
            "clean": analysis.correlation([r["clean"] for r in first], [r["clean"] for r in second]),
            "gap": analysis.correlation([r["gap"] for r in first], [r["gap"] for r in second]),
            "adv_mean_abs_difference": sum(abs(d) for d in diffs) / len(diffs),
            "adv_difference_sd": float(torch.tensor(diffs, dtype=torch.float64).std().item()),
            "adv_first": [r["adv"] for r in first], "adv_second": [r["adv"] for r in second],
        }
        write_json_atomic(self.folder / "noise_floor.json", floor)
        analysis.plot_noise_floor(floor, self.folder / "noise_floor.png")
        self.log(f"noise floor, adversarial accuracy of two scorings: {analysis.describe(floor['adv'])}; mean "
                 f"|difference| {floor['adv_mean_abs_difference']:.2f} pp")
        return floor

    def _score_files(self) -> list[Path]:
        return sorted(self.folder.glob("scores.rank*.jsonl"))

    def _all_stopped(self, stopped_here: bool) -> bool:
        """True when any rank stopped early (then every rank returns, resumable)."""
        flag = self.ctx.all_reduce_sum([1.0 if stopped_here else 0.0], self.device)[0]
        return flag > 0

    def _stopped(self, signum: int | None) -> SearchResult:
        self.log(f"stopped early; every result so far is saved in {self.folder}: run the same command "
                 f"(robnets search --resume {self.folder}) to continue")
        return SearchResult(self.folder, False, [], None, stopped_by=signum)

    def _fsp_kept(self, n: int) -> set[int]:
        s = self.s
        screened = {r["index"]: r.get("fsp_inherited_relative_deep", r["fsp_inherited_deep"])
                    for r in read_jsonl(sorted(self.folder.glob("fsp.rank*.jsonl")))}
        if s.fsp_threshold is not None:
            threshold = s.fsp_threshold
        else:
            ordered = sorted(screened.values())
            threshold = ordered[max(1, math.ceil(s.fsp_keep * len(ordered))) - 1]
        kept = {i for i, loss in screened.items() if loss <= threshold}
        self.log(f"FSP filter: kept {len(kept)} of {n} candidates (inherited relative deep-cell FSP loss <= "
                 f"{threshold:.4g})")
        return kept

    def report(self, candidates: list[Genotype], kept: set[int]) -> SearchResult:
        """Merge every rank's results and write the tables, analyses, plots and the best architecture."""
        s = self.s
        scored = {r["index"]: r for r in read_jsonl(self._score_files())}
        screened = {r["index"]: r for r in read_jsonl(sorted(self.folder.glob("fsp.rank*.jsonl")))}
        records = [scored[i] for i in sorted(scored)]
        everything = []
        for i, g in enumerate(candidates):
            row: dict[str, Any] = {"index": i, "genotype": str(g), "codes": g.to_codes(), **structure(g)}
            if i in screened:
                row.update({k: v for k, v in screened[i].items() if k.startswith("fsp_inherited")})
            if i in scored:
                row.update(scored[i], status="scored")
            else:
                row["status"] = "rejected by FSP filter" if i not in kept else "not scored"
            everything.append(row)
        write_json_atomic(self.folder / "architectures.json", everything)
        columns = ["index", "status", "genotype", "density", "convs_per_cell", "direct_convs_per_cell",
                   "skip_edge_convs_per_cell", "live_nodes_per_cell", "nominal_density", "fully_live", "params",
                   "effective_params", "clean", "adv", "gap", "n", "fsp_deep", "fsp_relative_deep", "fsp_inherited_deep",
                   "fsp_inherited_relative_deep", "finetune_loss", "seconds"]
        with atomic_path(self.folder / "architectures.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(everything)
        if not records:
            raise RobnetsError("no candidate was scored; check search.num_samples and the FSP filter settings")
        records = [{**r, **{k: v for k, v in screened[r["index"]].items() if k.endswith("_deep")}}
                   if r["index"] in screened else r for r in records]
        # the filter's effect can be judged only where nothing was rejected (fsp_keep 1: every candidate scored)
        simulate = 0.5 if s.fsp_keep >= 1.0 else None
        summary = analysis.summarize(records, fsp_keep=simulate if len(kept) == len(candidates) else None)
        write_json_atomic(self.folder / "analysis.json", summary)
        plots = analysis.plot(records, summary, self.folder)
        best = analysis.rank(records)[0]
        write_text_atomic(self.folder / "best_genotype.txt", best["genotype"] + "\n")
        write_json_atomic(self.folder / "best_codes.json", best["codes"])
        table = analysis.ranking_table(records)
        text = (f"# Search {self.config.name}\n\n{len(records)} architectures scored ({s.sampling} sampling, "
                f"{'cell-based' if s.share else 'cell-free'}, C={s.C}, {s.layers} cells), clean and "
                f"PGD-{s.eval_attack_steps} accuracy on {best['n']} held-out training images after "
                f"{s.finetune_steps} fine-tuning steps.\n\n## Ranking\n\n{table}\n\n## Correlations\n\n"
                f"{analysis.summary_text(summary)}\n\nBest: `{best['genotype']}` (clean {best['clean']:.1f}%, "
                f"PGD {best['adv']:.1f}%). Train it: `robnets train --genotype {self.folder / 'best_genotype.txt'} "
                f"--set model.layers={s.layers}`\n")
        write_text_atomic(self.folder / "ranking.md", text)
        self.log(f"search done: {len(records)} scored; best {best['genotype']} (clean {best['clean']:.1f}%, "
                 f"adv {best['adv']:.1f}%); wrote {', '.join(p.name for p in plots)}, ranking.md, architectures.csv")
        return SearchResult(self.folder, True, records, best)
