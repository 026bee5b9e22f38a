"""Counter-based random numbers keyed by (seed, sample id, stream).

AutoAttack's result for an image must not depend on which other images share its batch (nor on the batch
size), so every random draw is a pure function of the seed, the image's index in the evaluated set, and a
*stream* naming the draw (attack, restart, iteration, ...). A stateful ``torch.Generator`` cannot give
that: its output depends on how many numbers were drawn before, i.e. on the batch.

The hash is a 32-bit integer mixer (the MurmurHash3 finalizer) evaluated with int64 tensor arithmetic
that never overflows (32x32-bit products are split in 16-bit halves), so it gives the same bits on every
device and in every PyTorch build.
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35
_GOLDEN = 0x9E3779B9
#: elements generated per chunk (bounds the int64 temporaries)
_CHUNK = 1 << 22


def _mix_int(h: int) -> int:
    """The mixer on a Python int (for stream keys)."""
    h &= _M32
    h ^= h >> 16
    h = (h * _C1) & _M32
    h ^= h >> 13
    h = (h * _C2) & _M32
    h ^= h >> 16
    return h


def _mul32(t: torch.Tensor, c: int) -> torch.Tensor:
    """(t * c) mod 2**32 for int64 t in [0, 2**32) without int64 overflow."""
    lo = t & 0xFFFF
    hi = t >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _mix(t: torch.Tensor) -> torch.Tensor:
    """The mixer on an int64 tensor holding 32-bit values."""
    t = t ^ (t >> 16)
    t = _mul32(t, _C1)
    t = t ^ (t >> 13)
    t = _mul32(t, _C2)
    return t ^ (t >> 16)


def stream_key(seed: int, stream: tuple[int, ...]) -> int:
    """A 32-bit key for ``stream`` (a tuple of non-negative ints) under ``seed``."""
    h = _mix_int(_GOLDEN)
    for value in (seed & _M32, (seed >> 32) & _M32, len(stream), *stream):
        h = _mix_int((h + _GOLDEN + _mix_int(int(value) & _M32)) & _M32)
    return h


def random_bits(key: int, ids: torch.Tensor, count: int) -> torch.Tensor:
    """``(len(ids), count)`` int64 tensor of 32-bit hashes of (key, id, element index), on ids' device."""
    return random_bits_for_keys([key], ids, count)[0]


def random_bits_for_keys(keys: list[int], ids: torch.Tensor, count: int) -> torch.Tensor:
    """``(len(keys), len(ids), count)``: :func:`random_bits` for several keys at once (the same bits, a few
    large tensor operations instead of ~100 tiny ones per key: Square draws per query, 5,000 times)."""
    ids = ids.to(torch.int64)
    key_t = torch.tensor(list(keys), dtype=torch.int64, device=ids.device)[:, None]
    k1 = _mix((ids & _M32)[None, :] ^ key_t)
    k1 = _mix((k1 + ((ids >> 32) & _M32)[None, :] + _GOLDEN) & _M32).reshape(-1)
    k2 = _mix(k1 ^ 0x68E31DA4)
    rows = k1.shape[0]
    out = torch.empty((rows, count), dtype=torch.int64, device=ids.device)
    step = max(1, _CHUNK // max(count, 1))
    counters = _mul32(torch.arange(count, device=ids.device, dtype=torch.int64) + 1, 0x9E3779B1)
    for start in range(0, rows, step):
        a, b = k1[start:start + step, None], k2[start:start + step, None]
        v = _mix(a ^ counters[None, :])
        out[start:start + step] = _mix((v + b) & _M32)
    return out.view(len(keys), ids.shape[0], count)


class SampleRandom:
    """Random numbers for a batch of samples, each row a function of (seed, sample id, stream) only."""

    def __init__(self, seed: int, ids: torch.Tensor, salt: tuple[int, ...] = ()) -> None:
        self.seed = int(seed)
        self.ids = ids.to(torch.int64)
        self.salt = tuple(int(s) for s in salt)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def subset(self, index: torch.Tensor) -> SampleRandom:
        return SampleRandom(self.seed, self.ids[index.to(self.ids.device)], self.salt)

    def _key(self, stream: tuple[int, ...]) -> int:
        return stream_key(self.seed, self.salt + tuple(int(s) for s in stream))

    def uniform(self, stream: tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                device: torch.device | None = None) -> torch.Tensor:
        """Uniform in [0, 1), shape ``(n, *shape)``."""
        count = math.prod(shape)
        bits = random_bits(self._key(stream), self.ids, count)
        u = (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return u.view(len(self), *shape).to(device=device or self.ids.device, dtype=dtype)

    def uniform_streams(self, streams: list[tuple[int, ...]], shape: tuple[int, ...],
                        dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
        """``uniform(stream, shape)`` for each stream, stacked: shape ``(len(streams), n, *shape)``."""
        count = math.prod(shape)
        bits = random_bits_for_keys([self._key(s) for s in streams], self.ids, count)
        u = (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return u.view(len(streams), len(self), *shape).to(device=device or self.ids.device, dtype=dtype)

    def normal(self, stream: tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               device: torch.device | None = None) -> torch.Tensor:
        """Standard normal (Box-Muller), shape ``(n, *shape)``."""
        count = math.prod(shape)
        bits = random_bits(self._key(stream), self.ids, 2 * count)
        u1 = ((bits[:, 0::2] >> 8) + 1).to(torch.float64) * (1.0 / (1 << 24))  # (0, 1]
        u2 = (bits[:, 1::2] >> 8).to(torch.float64) * (1.0 / (1 << 24))
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.view(len(self), *shape).to(device=device or self.ids.device, dtype=dtype)

    def signs(self, stream: tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
              device: torch.device | None = None) -> torch.Tensor:
        """+1 or -1 with equal probability, shape ``(n, *shape)``."""
        count = math.prod(shape)
        bits = random_bits(self._key(stream), self.ids, count)
        s = ((bits >> 31) & 1).to(dtype) * 2 - 1
        return s.view(len(self), *shape).to(device=device or self.ids.device)
