"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L∞ and L2, untargeted and targeted.

Written from the paper's description: at the current iterate x_k the decision boundary between the true
class y and a class t is linearised, {z : f(x_k) + <∇f(x_k), z - x_k> = 0} with f = z_t - z_y (t fixed for
FAB-T, the closest linearised boundary for untargeted FAB). Both x_k and the original point x_0 are
projected onto that hyperplane *within the box [0, 1]^d* (minimal L∞ / L2 displacement, solved exactly by a
sort and a search over breakpoints); the next iterate is the convex combination

    x_{k+1} = clip((1 - α)(x_k + η δ_k) + α(x_0 + η δ_0)),   α = min(‖δ_k‖ / (‖δ_k‖ + ‖δ_0‖), α_max)

with overshoot η = 1.05 and α_max = 0.1. When x_{k+1} is misclassified it is recorded if it is the closest
adversarial point so far and pulled back towards x_0, x_{k+1} = x_0 + β(x_{k+1} - x_0), β = 0.9.
Restarts after the first start from a random point at distance eps/2.

FAB minimises the norm; for robust accuracy at ``eps`` only points within ``eps`` count. ``attack(x, y)``
therefore returns, per image, the adversarial point found when its norm is ≤ eps and ``x`` itself otherwise
(so the output always lies in the ε-ball); ``attack.min_norm(x, y)`` returns the unclipped minimum-norm
points and their norms (inf where nothing was found).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import RobnetsError
from ._common import SampleSeededAttack, check_count, lp_norm, num_classes_check, random_start
from ._rng import SampleRandom

_BIG = 1e30


def _solve_sorted(aw: torch.Tensor, k: torch.Tensor, cap: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """Smallest t >= 0 with Σ_i aw_i min(t k_i, cap_i) = need per row, by sorting the breakpoints cap_i / k_i
    (exact, O(D log D)); _BIG where no t reaches ``need``, 0 where ``need`` is 0."""
    breaks = torch.where(k > 0, cap / k.clamp_min(1e-30), _BIG).clamp(max=_BIG)
    ts, order = breaks.sort(dim=1)
    aws, ks, caps = aw.gather(1, order), k.gather(1, order), cap.gather(1, order)
    saturated = torch.cumsum(aws * caps, dim=1)                 # Σ over breakpoints <= t_j of aw cap
    slope_total = (aw * k).sum(1, keepdim=True)
    rest = (slope_total - torch.cumsum(aws * ks, dim=1)).clamp_min(0.0)
    progress = saturated + ts * rest
    m = (progress < need[:, None]).sum(1)                       # breakpoints below the solution
    feasible = m < aw.shape[1]
    prev = (m - 1).clamp_min(0)[:, None]
    sat_prev = torch.where(m > 0, saturated.gather(1, prev).squeeze(1), 0.0)
    rest_prev = torch.where(m > 0, rest.gather(1, prev).squeeze(1), slope_total.squeeze(1))
    t = (need - sat_prev) / rest_prev.clamp_min(1e-30)
    return torch.where(feasible & (need > 0), t, torch.where(need > 0, _BIG, 0.0))


def _solve_newton(aw: torch.Tensor, k: torch.Tensor, cap: torch.Tensor, need: torch.Tensor,
                  max_iter: int = 50, unit_k: bool = False) -> torch.Tensor | None:
    """The same t by Newton's method from t = 0 on the concave, piecewise-linear progress function: each step
    lands where the current piece reaches ``need``, never past the solution, and once the set of unsaturated
    coordinates stops changing the step is the exact solution. FAB's problems take 4-5 steps (a few passes over
    the row instead of a sort: 2-3x faster on CPU). None if it has not settled after ``max_iter`` steps.
    ``unit_k``: every k_i is 0 or 1 (L∞), so t is compared with the caps directly."""
    # per coordinate: slope contribution, saturated progress, 1 (to count): one batched product per step sums
    # all three over the unsaturated coordinates
    columns = torch.stack([aw * k, aw * cap, torch.ones_like(aw)], dim=2)
    total = columns[:, :, 1].sum(1)
    feasible = total >= need
    t = torch.zeros_like(need)
    count = None
    for _ in range(max_iter):
        active = (cap > t[:, None]) if unit_k else (t[:, None] * k < cap)   # coordinates not yet saturated
        slope, active_progress, active_count = torch.bmm(active.to(aw.dtype)[:, None, :], columns)[:, 0].unbind(1)
        done = total - active_progress
        t_next = torch.maximum((need - done) / slope.clamp_min(1e-30), t)
        settled = count is not None and torch.equal(active_count, count)
        t, count = t_next, active_count
        if settled:
            return torch.where(feasible & (need > 0), t, torch.where(need > 0, _BIG, 0.0))
    return None


def project_onto_hyperplane_in_box(p: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Minimal-norm d with <w, p + d> = b and 0 <= p + d <= 1 (rows are independent problems).

    p, w: (N, D); b: (N,). When the box does not reach the hyperplane, d is the point of the box that gets
    closest to it (every coordinate pushed to the box boundary in the helpful direction).

    Every coordinate moves in the helpful direction, d_i = sign(w_i) min(t k_i, cap_i) with the room ``cap_i``
    to the box: L∞ moves all coordinates by the same t (k_i = 1), L2 in proportion to |w_i| (k_i = |w_i|);
    the smallest t that reaches the hyperplane is found by Newton's method (exact; a sort of the breakpoints
    is the fallback).
    """
    p, w = p.float(), w.float()
    r = b.float() - (w * p).sum(1)                     # needed change of <w, .>
    sign_r = torch.where(r < 0, -1.0, 1.0)
    w = w * sign_r[:, None]                             # now <w, d> must reach |r| >= 0
    need = r.abs()
    direction = torch.sign(w)
    aw = w.abs()
    cap = torch.where(w > 0, 1.0 - p, p) * (aw > 0)   # room to move in the helpful direction
    k = (aw > 0).to(aw.dtype) if norm == "Linf" else aw
    t = _solve_newton(aw, k, cap, need, unit_k=norm == "Linf")
    if t is None:
        t = _solve_sorted(aw, k, cap, need)
    return direction * torch.minimum(t[:, None] * k, cap)


class FAB(SampleSeededAttack):
    """FAB (``targeted=False``) or FAB-T (``targeted=True``: boundary to the 2nd, 3rd, ... most likely class
    at the clean point, ``n_target_classes`` of them, each with ``n_restarts`` runs).

    Threat model: ``norm='Linf'|'L2'``; ``eps`` is the radius that counts as success (and the scale of the
    random restarts). ``y`` holds true labels. Defaults: ``n_iter=100``, ``n_restarts=1``,
    ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``, ``n_target_classes=9``, ``seed=0``.
    ``attack(x, y, sample_ids=None)`` -> points within eps (``x`` where no adversarial point within eps
    was found); ``attack.last_norms`` then holds the norms of the adversarial points found (inf if none).
    """

    salt = 4

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, n_iter: int = 100,
                 n_restarts: int = 1, targeted: bool = False, n_target_classes: int = 9,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, seed: int | None = 0,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps, norm=norm, seed=seed, precision=precision)
        self.targeted = bool(targeted)
        self.salt = 5 if self.targeted else 4
        self.n_iter = check_count("n_iter", n_iter, 0)
        self.n_restarts = check_count("n_restarts", n_restarts)
        self.n_target_classes = check_count("n_target_classes", n_target_classes)
        if not 0.0 <= alpha_max <= 1.0 or not eta > 0 or not 0.0 < beta <= 1.0:
            raise RobnetsError(f"FAB needs 0 <= alpha_max <= 1, eta > 0 and 0 < beta <= 1, got "
                               f"alpha_max={alpha_max}, eta={eta}, beta={beta}")
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.last_norms: torch.Tensor | None = None
        self._stop_at_eps = True

    def describe(self) -> dict:
        return {**super().describe(), "n_iter": self.n_iter, "n_restarts": self.n_restarts,
                "n_target_classes": self.n_target_classes, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta}

    # ------------------------------------------------------------------ public API
    def min_norm(self, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None = None):
        """(x_adv, norms): the closest adversarial points found over all targets and restarts (not clipped to
        eps) and their norms; ``x`` and ``inf`` where none was found (0 for images already misclassified)."""
        self._stop_at_eps = False
        try:
            x_adv = self(x, y, sample_ids=sample_ids)
        finally:
            self._stop_at_eps = True
        return x_adv, self.last_norms

    # ------------------------------------------------------------------ linearised boundary
    def _boundary(self, x1: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
        """(f, ∇f) of the boundary to use at x1: f = z_t - z_y, its gradient w.r.t. the input."""
        x_req, logits = self.logits_with_input_grad(x1)
        n = x1.shape[0]
        rows = torch.arange(n, device=x1.device)
        if target is not None:
            f = logits[rows, target] - logits[rows, y]
            (g,) = torch.autograd.grad(f.sum(), [x_req])
            return f.detach(), g.to(x1.dtype)
        n_classes = logits.shape[1]
        grads = []
        for k in range(n_classes):
            (g,) = torch.autograd.grad(logits[:, k].sum(), [x_req], retain_graph=k < n_classes - 1)
            grads.append(g.to(x1.dtype))
        jac = torch.stack(grads, 1)                                   # (N, C, *shape)
        logits = logits.detach()
        f_all = logits - logits[rows, y][:, None]
        g_all = jac - jac[rows, y][:, None]
        dual = g_all.flatten(2).abs().sum(2) if self.norm == "Linf" else g_all.flatten(2).norm(dim=2)
        dist = f_all.abs() / (dual + 1e-12)
        dist[rows, y] = float("inf")
        k = dist.argmin(1)
        return f_all[rows, k], g_all[rows, k]

    # ------------------------------------------------------------------ attack
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rng = self.sample_random(x)
        n = x.shape[0]
        out = x.clone()
        norms = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        if n == 0:
            self.last_norms = norms
            return out
        logits = self.logits(x)
        num_classes_check(logits.shape[1], 2, "FAB")
        norms[logits.argmax(1) != y] = 0.0
        if self.targeted:
            order = logits.argsort(dim=1, descending=True)
            count = min(self.n_target_classes, logits.shape[1] - 1)
            plan = [(rank, order[:, rank - 1]) for rank in range(2, count + 2)]
        else:
            plan = [(0, None)]
        for rank, target in plan:
            for restart in range(self.n_restarts):
                done = norms <= self.eps if self._stop_at_eps else norms == 0
                todo = (~done).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                adv, adv_norm = self._single_run(x[todo], y[todo], None if target is None else target[todo],
                                                 rng.subset(todo), (rank, restart), restart > 0)
                better = adv_norm < norms[todo]
                out[todo[better]] = adv[better]
                norms[todo[better]] = adv_norm[better]
        self.last_norms = norms
        if self._stop_at_eps:
            out = torch.where((norms <= self.eps).view(-1, *([1] * (x.dim() - 1))), out, x)
        return out

    def _single_run(self, x0: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, rng: SampleRandom,
                    stream: tuple[int, ...], random_init: bool):
        n = x0.shape[0]
        view = (-1,) + (1,) * (x0.dim() - 1)
        x1 = random_start(x0, self.eps, self.norm, rng, stream, radius=0.5) if random_init else x0.clone()
        best = x0.clone()
        best_norm = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        flat0 = x0.flatten(1)
        for _ in range(self.n_iter):
            f, g = self._boundary(x1, y, target)
            w = g.flatten(1)
            b = (w * x1.flatten(1)).sum(1) - f                       # hyperplane <w, z> = b
            d = project_onto_hyperplane_in_box(torch.cat([x1.flatten(1), flat0]), torch.cat([w, w]),
                                               torch.cat([b, b]), self.norm).to(x0.dtype)
            d1, d0 = d[:n].view_as(x0), d[n:].view_as(x0)
            a1 = lp_norm(d1, self.norm).clamp_min(1e-8)
            a0 = lp_norm(d0, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max).view(view)
            x1 = ((1 - alpha) * (x1 + self.eta * d1) + alpha * (x0 + self.eta * d0)).clamp(0.0, 1.0)
            is_adv = self.logits(x1).argmax(1) != y
            if is_adv.any():
                dist = lp_norm(x1 - x0, self.norm)
                closer = is_adv & (dist < best_norm)
                best = torch.where(closer.view(view), x1, best)
                best_norm = torch.where(closer, dist, best_norm)
                x1 = torch.where(is_adv.view(view), x0 + self.beta * (x1 - x0), x1)
        return best, best_norm

