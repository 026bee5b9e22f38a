"""Distributed context from torchrun or slurm (timm-style rank detection), passed around explicitly.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under slurm ``srun`` we map
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, and take the master address from the first host of
SLURM_JOB_NODELIST (``scontrol show hostnames``). Backend: NCCL on CUDA, gloo on CPU (tests run there).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import RobnetsError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, kind: str) -> torch.device:
        if kind == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(kind)

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum numbers over ranks (identity when single-process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def detect_environment(environ: dict | None = None) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from torchrun or slurm variables ({} if neither)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k in env}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = env.get("SLURM_JOB_ID", "0")
        return {
            "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(job) % 20000),
        }
    return {}


def init_distributed(device_kind: str, required: bool = False) -> DistContext:
    """Join the process group described by the environment; single process when there is none."""
    found = detect_environment()
    if not found or int(found.get("WORLD_SIZE", "1")) <= 1:
        if required:
            raise RobnetsError("--distributed was asked for but no torchrun (RANK/WORLD_SIZE) or slurm "
                               "(SLURM_PROCID/SLURM_NTASKS) variables are set; launch with torchrun or srun")
        return DistContext()
    os.environ.update(found)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    local_rank = int(found.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
