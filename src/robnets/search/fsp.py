"""Flow of solution procedure (FSP) matrices of RobNet cells and the clean-vs-adversarial FSP loss.

For a cell with input feature map F_in (N, m, h, w) and output F_out (N, n, h, w), the FSP matrix
(Yim et al. 2017; RobNets Sec. 4.3) is G = (1/(h*w)) * sum over positions (s, t) of F_in(s,t) F_out(s,t)^T,
an m x n matrix per example. The cell input is the previous cell's output (the cell's second input, s1; the
stem output for the first cell). Where a reduction cell halves the resolution, F_in is average-pooled to the
output's size first. The FSP loss of a cell compares clean and adversarial inputs:
L = (1/N) * sum over examples of ||G(x) - G(x_adv)||_2^2 (squared Frobenius norm). The paper finds that the
loss of deep cells tracks the clean-adversarial accuracy gap and uses it to reject samples in cell-free
search; :func:`deep_cell_loss` averages the cells after the second reduction.

The raw loss grows with the size of G (m x n entries) and with the square of the activations' scale, so it
ranks wide or large-activation cells as "unstable" whatever they do. The relative loss
L_rel = (1/N) * sum over examples of ||G(x) - G(x_adv)||^2 / ||G(x)||^2 is unchanged when the features are
scaled or their channels repeated, which makes it comparable across architectures of different width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobnetsError
from ..runtime import eval_mode


def fsp_matrix(f_in: torch.Tensor, f_out: torch.Tensor) -> torch.Tensor:
    """FSP matrices ``(N, m, n)`` of feature maps ``(N, m, h, w)`` and ``(N, n, h', w')``."""
    if f_in.dim() != 4 or f_out.dim() != 4 or f_in.shape[0] != f_out.shape[0]:
        raise RobnetsError(f"FSP needs two NCHW feature maps of the same batch, got {tuple(f_in.shape)} and "
                           f"{tuple(f_out.shape)}")
    if f_in.shape[-2:] != f_out.shape[-2:]:
        f_in = F.adaptive_avg_pool2d(f_in, f_out.shape[-2:])
    h, w = f_out.shape[-2:]
    return torch.einsum("nchw,ndhw->ncd", f_in.float(), f_out.float()) / (h * w)


def cell_features(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input s1, output) of every cell of a RobNet or supernet for inputs ``x``, in eval mode."""
    cells = getattr(model, "cells", None)
    if cells is None:
        raise RobnetsError("FSP analysis needs a RobNet or supernet (a model with .cells)")
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [cell.register_forward_hook(lambda m, inputs, out: captured.append((inputs[1], out)))
             for cell in cells]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def cell_fsp_losses(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *,
                    relative: bool = False) -> list[float]:
    """FSP loss of every cell between clean ``x`` and adversarial ``x_adv`` (mean over examples); ``relative``
    divides each example's loss by the squared norm of its clean FSP matrix (see the module docstring)."""
    return cell_fsp_both(model, x, x_adv)[1 if relative else 0]


def cell_fsp_both(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[list[float], list[float]]:
    """The raw and the relative FSP loss of every cell, from one pass over the clean and adversarial inputs."""
    clean = cell_features(model, x)
    adv = cell_features(model, x_adv)
    raw, relative = [], []
    for (c_in, c_out), (a_in, a_out) in zip(clean, adv):
        g_clean = fsp_matrix(c_in, c_out)
        diff = (g_clean - fsp_matrix(a_in, a_out)).pow(2).sum(dim=(1, 2))
        norm = g_clean.pow(2).sum(dim=(1, 2))
        raw.append(diff.mean().item())
        # an example whose clean FSP matrix is all zeros (a dead cell) counts as fully changed when anything moved
        ratio = torch.where(norm > 0, diff / norm.clamp_min(torch.finfo(norm.dtype).tiny), (diff > 0).float())
        relative.append(ratio.mean().item())
    return raw, relative


def deep_cell_loss(losses: list[float]) -> float:
    """Mean FSP loss of the deep cells: those from the second reduction cell (index 2*layers//3) on."""
    if not losses:
        raise RobnetsError("no cell FSP losses given")
    start = 2 * len(losses) // 3
    deep = losses[start:]
    return sum(deep) / len(deep)
