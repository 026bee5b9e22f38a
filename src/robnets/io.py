"""File output that survives interruption: write to a temporary file in the same folder, flush it to disk,
then rename it over the target (the folder is flushed too, so the rename itself survives a power cut)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STALE_TEMP_SECONDS = 3600.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path, name: str, older_than: float = STALE_TEMP_SECONDS) -> None:
    """Delete ``.<name>.*.tmp`` left in ``folder`` by a writer that was killed (older than ``older_than`` s)."""
    cutoff = time.time() - older_than
    for stale in folder.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed and renamed onto ``path`` atomically.

    The result gets the mode a plain ``open`` would give (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(Path(tmp))
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_jsonl(paths: list[Path]) -> list[dict]:
    """Records of every complete line of the given files (a line cut by a crash is ignored)."""
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record and make it durable before going on. A line torn by a crash before it is closed
    first, so the new record starts a line of its own (and the torn one stays ignored)."""
    torn = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def pack_bits(flags: Any) -> str:
    """A boolean vector as compact text: base64 of its bits (8 per byte, first element in the highest bit).
    Per-example correctness of 10,000 test images takes 1,668 characters; :func:`unpack_bits` reads it back."""
    import base64

    import numpy as np

    values = np.asarray(flags.cpu() if hasattr(flags, "cpu") else flags, dtype=bool).reshape(-1)
    return base64.b64encode(np.packbits(values).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> Any:
    """The boolean numpy vector of length ``n`` that :func:`pack_bits` wrote."""
    import base64

    import numpy as np

    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"packed bits hold {len(raw) * 8} flags, not {n}")
    return np.unpackbits(raw)[:n].astype(bool)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on a run folder (a lock on the folder itself: nothing is written into it) so
    that two processes cannot resume or write the same run at once; a second one gets one clear error.
    No-op when the folder does not exist yet (a fresh run creates it) or where file locks are unavailable."""
    from .errors import RobnetsError

    folder = Path(folder)
    if not enabled or not folder.is_dir():
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RobnetsError(f"{folder} is in use by another process; wait for it to finish, or stop it, "
                               f"before resuming this run") from None
        yield
    finally:
        os.close(fd)
