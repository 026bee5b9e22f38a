"""Published weights by name: a registry of what this project trained, shipped inside the package.

Names follow timm: ``<model>.<tag>`` (``robnet_free.nfgsm_4ep_cifar10``); a bare model name means that model's
default (its most robust) weights. Every entry records the architecture, dataset, threat model, eps, training
recipe, file and sha256, and the accuracies measured on the CIFAR-10 test set, each with its n. Loading
verifies the sha256, so a changed or damaged file is refused rather than evaluated. Nothing is downloaded:
the files live in ``robnets/weights/`` and go into the wheel.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, RobnetsError
from ..io import sha256_file


@dataclass(frozen=True)
class Measured:
    """One measured accuracy (%) with its number of test points and how it was measured."""

    accuracy: float
    n: int
    how: str = ""


@dataclass(frozen=True)
class PretrainedWeights:
    name: str  # '<model>.<tag>'
    model: str  # registered model name
    dataset: str
    threat_model: str
    eps: float
    recipe: str
    file: str  # file name inside robnets/weights/
    sha256: str
    measured: dict[str, Measured] = field(default_factory=dict)  # 'clean', 'pgd20', 'autoattack'
    notes: str = ""

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    def path(self) -> Path:
        return Path(str(resources.files("robnets").joinpath("weights", self.file)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "dataset": self.dataset, "threat_model": self.threat_model,
                "eps": self.eps, "recipe": self.recipe, "file": self.file, "sha256": self.sha256,
                "measured": {k: {"accuracy": m.accuracy, "n": m.n, "how": m.how} for k, m in self.measured.items()},
                "notes": self.notes}


_PGD20 = "PGD-20, Linf 8/255, step 2/255, random start, seed 0, fp32"


def _autoattack_on_first_200(clean: str) -> str:
    return ("the reference AutoAttack (pyautoattack 0.2.0), standard version, Linf 8/255, seed 0, fp32, on the "
            f"first 200 CIFAR-10 test images (clean accuracy on them {clean} %); docs/data/weights/")


PRETRAINED: tuple[PretrainedWeights, ...] = (
    PretrainedWeights(
        name="robnet_free.nfgsm_4ep_cifar10", model="robnet_free", dataset="cifar10", threat_model="Linf",
        eps=8 / 255,
        recipe="N-FGSM (noise 2 eps, step eps), SGD momentum 0.9, 1 warm-up + 3 cosine epochs, batch 256, bf16; "
               "experiments/robnet_free_nfgsm_gpu/config.yaml",
        file="robnet_free_cifar10_nfgsm_4ep.safetensors",
        sha256="22f111a9a75e310ca01f60a50f4336555e06e0379d1540216adb20e0724b27bd",
        measured={"clean": Measured(51.74, 10000, "CIFAR-10 test set"),
                  "pgd20": Measured(31.94, 10000, _PGD20),
                  "autoattack": Measured(28.00, 200, _autoattack_on_first_200("55.00"))},
        notes="a 4-epoch fast run on the paper's architecture (paper, 170 epochs of PGD-7: 82.8 / 52.7); "
              "stored in fp16",
    ),
    PretrainedWeights(
        name="robnet_compact.nfgsm_3ep_cifar10", model="robnet_compact", dataset="cifar10", threat_model="Linf",
        eps=8 / 255,
        recipe="N-FGSM (noise 2 eps, step eps), SGD momentum 0.9, 3 epochs, batch 128, fp32 on CPU; "
               "experiments/robnet_compact_nfgsm_cpu/config.yaml",
        file="robnet_compact_cifar10_nfgsm_3ep.safetensors",
        sha256="ca4dad47cd2eed5eef7cb72e059e92502048ee1ced559256361f32707fe7f9d7",
        measured={"clean": Measured(48.45, 10000, "CIFAR-10 test set"),
                  "pgd20": Measured(29.27, 10000, _PGD20),
                  "autoattack": Measured(23.50, 200, _autoattack_on_first_200("53.50"))},
        notes="the RobNet_large cell at C=16 with 5 cells: small enough to train, attack and search on a CPU",
    ),
)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names of the published weights matching a shell-style pattern (on the full name or the model)."""
    return [w.name for w in PRETRAINED if fnmatch.fnmatch(w.name, pattern) or fnmatch.fnmatch(w.model, pattern)]


def _robustness(entry: PretrainedWeights) -> float:
    for key in ("autoattack", "pgd20"):
        if key in entry.measured:
            return entry.measured[key].accuracy
    return 0.0


def pretrained_info(name: str) -> PretrainedWeights:
    """The entry for ``<model>.<tag>``, or a model's default (most robust) weights for a bare model name."""
    exact = [w for w in PRETRAINED if w.name == name]
    if exact:
        return exact[0]
    for_model = [w for w in PRETRAINED if w.model == name]
    if for_model:
        return max(for_model, key=_robustness)
    known = ", ".join(w.name for w in PRETRAINED)
    raise RobnetsError(f"no published weights named {name!r}; available: {known} (list them with `robnets weights`)")


def verified_path(entry: PretrainedWeights) -> Path:
    """The shipped file of ``entry``, after checking that its sha256 is the recorded one."""
    path = entry.path()
    if not path.is_file():
        raise CheckpointError(f"weights {entry.name}: {entry.file} is missing from the installed package; "
                              f"reinstall robnets")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise CheckpointError(f"weights {entry.name}: {path} has sha256 {digest[:16]}..., not the published "
                              f"{entry.sha256[:16]}...; the file was changed or damaged; reinstall robnets")
    return path


def load_pretrained(model: Any, name: str) -> Any:
    """Load the published weights ``name`` into ``model`` (strict, sha256-verified); returns the model."""
    from .checkpoint import load_weights, read_checkpoint

    entry = pretrained_info(name)
    loaded = read_checkpoint(verified_path(entry))
    load_weights(model, loaded, model_name=entry.model, source=f"published weights {entry.name}")
    model.checkpoint_metadata = dict(loaded.metadata)
    model.pretrained_name = entry.name
    return model


def pretrained_model_args(name: str) -> dict[str, Any]:
    """The constructor arguments the published weights were saved with (from the file's metadata)."""
    import json

    from safetensors import safe_open

    entry = pretrained_info(name)
    with safe_open(str(verified_path(entry)), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    args = json.loads(meta.get("model_args") or "{}")
    return {k: v for k, v in args.items() if v is not None}


def weights_table() -> str:
    """The registry as a Markdown table (what ``robnets weights`` prints)."""
    def cell(entry: PretrainedWeights, key: str) -> str:
        m = entry.measured.get(key)
        return "-" if m is None else f"{m.accuracy:.2f} (n={m.n:,})"

    rows = ["| name | model | dataset | threat | clean % | PGD-20 % | AutoAttack % | sha256 |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for w in PRETRAINED:
        rows.append(f"| {w.name} | {w.model} | {w.dataset} | {w.threat_model} {w.eps * 255:.0f}/255 | "
                    f"{cell(w, 'clean')} | {cell(w, 'pgd20')} | {cell(w, 'autoattack')} | {w.sha256[:12]} |")
    return "\n".join(rows)
