"""Resumable AutoAttack state: a JSON file (robust flags, finished attacks, history) plus adversarial points.

Layout for ``state_path = run.json``:

* ``run.json`` — format version, a fingerprint of the evaluated points and labels, the threat model, the
  settings of every attack that has run, the ordered list of finished attacks, the attack in progress and
  the points it has already been run on, the robust flag of every point (strings of '0'/'1'), the
  robust-accuracy history and per-attack counts;
* ``run.json.adv/`` — one ``NNNNNN.pt`` file per attacked batch with the indices and adversarial points
  found there (so a resumed run returns the same ``x_adv`` as an uninterrupted one).

Every file is written to a temporary file in the same folder, flushed, then renamed over the old one, so an
interruption leaves either the old or the new version, never a torn file. The points file of a batch is
written before the JSON that marks those points non-robust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch

from ...errors import RobnetsError

FORMAT = "robnets-autoattack-state/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of the points (as float32) and labels, to refuse a state file made for other data."""
    digest = hashlib.sha256()
    digest.update(str(tuple(x.shape)).encode())
    digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def _unbits(text: str | None, n: int, path: Path) -> torch.Tensor | None:
    if text is None:
        return None
    if not isinstance(text, str) or len(text) != n or set(text) - {"0", "1"}:
        raise RobnetsError(f"the per-point flags in {path} are corrupt; delete the file to start over")
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


class EvaluationState:
    """In-memory view of a state file (``path=None``: nothing is written)."""

    def __init__(self, path: str | os.PathLike | None, *, fingerprint: str, n: int, norm: str, eps: float) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.n = n
        self.norm = norm
        self.eps = eps
        self.robust_flags: torch.Tensor | None = None
        self.clean_accuracy: float | None = None
        self.finished: list[str] = []
        self.in_progress: str | None = None
        #: points the attack in progress has already been run on (None when no attack is in progress)
        self.progress: torch.Tensor | None = None
        self.settings: dict[str, dict] = {}
        self.history: list[tuple[str, float]] = []
        self.counts: dict[str, dict] = {}
        self._chunks = 0

    # ------------------------------------------------------------------ files
    @property
    def adv_dir(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + ".adv")

    def save(self) -> None:
        if self.path is None:
            return
        flags = None if self.robust_flags is None else _bits(self.robust_flags)
        payload = {
            "format": FORMAT, "fingerprint": self.fingerprint, "n": self.n, "norm": self.norm, "eps": self.eps,
            "clean_accuracy": self.clean_accuracy, "finished": self.finished, "in_progress": self.in_progress,
            "settings": self.settings, "history": [[name, acc] for name, acc in self.history],
            "counts": self.counts, "robust_flags": flags,
            "progress": None if self.progress is None else _bits(self.progress),
        }
        atomic_write_bytes(self.path, (json.dumps(payload, indent=1) + "\n").encode())

    def save_points(self, index: torch.Tensor, points: torch.Tensor) -> None:
        """Record adversarial points (a chunk file); call before marking them non-robust in the JSON."""
        if self.adv_dir is None or index.numel() == 0:
            return
        buffer = io.BytesIO()
        torch.save({"index": index.detach().cpu(), "points": points.detach().cpu()}, buffer)
        atomic_write_bytes(self.adv_dir / f"{self._chunks:06d}.pt", buffer.getvalue())
        self._chunks += 1

    def load_points(self, x_adv: torch.Tensor, robust_flags: torch.Tensor) -> None:
        """Put the recorded adversarial points of non-robust images into x_adv (in chunk order)."""
        if self.adv_dir is None or not self.adv_dir.is_dir():
            return
        files = sorted((f for f in self.adv_dir.glob("*.pt") if f.stem.isdigit()), key=lambda f: int(f.stem))
        self._chunks = 1 + max((int(f.stem) for f in files), default=-1)
        for file in files:
            chunk = torch.load(file, map_location="cpu", weights_only=True)
            index = chunk["index"].long()
            keep = ~robust_flags.cpu()[index]   # points of a batch whose flags never reached the JSON are ignored
            x_adv[index[keep].to(x_adv.device)] = chunk["points"][keep].to(x_adv.device, x_adv.dtype)

    def clear_points(self) -> None:
        if self.adv_dir is not None and self.adv_dir.is_dir():
            for file in self.adv_dir.glob("*.pt"):
                file.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str, n: int, norm: str, eps: float) -> EvaluationState:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RobnetsError(f"cannot read the AutoAttack state file {path}: {err}; "
                               f"delete it to start over") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RobnetsError(f"{path} is not an AutoAttack state file of this version ({FORMAT}); "
                               f"delete it or pass another state_path")
        if data.get("fingerprint") != fingerprint or data.get("n") != n:
            raise RobnetsError(f"the AutoAttack state file {path} was made for other images or labels; "
                               f"pass another state_path (or delete it to start over)")
        if data.get("norm") != norm or data.get("eps") != eps:
            raise RobnetsError(f"the AutoAttack state file {path} was made for norm={data.get('norm')} "
                               f"eps={data.get('eps')}, not norm={norm} eps={eps}; pass another state_path")
        state = cls(path, fingerprint=fingerprint, n=n, norm=norm, eps=eps)
        state.robust_flags = _unbits(data.get("robust_flags"), n, path)
        state.progress = _unbits(data.get("progress"), n, path)
        state.clean_accuracy = data.get("clean_accuracy")
        state.finished = list(data.get("finished", []))
        state.in_progress = data.get("in_progress")
        state.settings = dict(data.get("settings", {}))
        state.history = [(str(name), float(acc)) for name, acc in data.get("history", [])]
        state.counts = dict(data.get("counts", {}))
        return state
