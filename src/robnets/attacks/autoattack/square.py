"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black-box random search.

Written from the paper's description. Only forward passes are used, all under ``torch.no_grad``.

* L∞: start from vertical stripes of ±ε (one random sign per channel and column); each query changes one
  random square window of side s to ±ε around x (one random sign per channel) and keeps the change if the
  margin loss z_y - max_{i≠y} z_i decreases (or the point becomes misclassified).
* L2: start from a 5×5 grid of tiles, each holding the "two opposite bumps" pattern with a random sign per
  channel, scaled to L2 norm ε; each query moves the perturbation mass of a second random window (and the
  unused budget) into a first window, adding a fresh bump pattern there, and renormalises to norm ε.
* side s = round(sqrt(p · pixels)), p halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
  starting from ``p_init = 0.8`` (``rescale_schedule=True`` maps those iterations onto ``n_queries``
  instead of a 10000-query budget; AutoAttack uses the unscaled schedule with 5000 queries).

Window positions and signs are drawn per image (keyed by its sample id), so an image's result does not depend
on its batch. Images stop being queried once misclassified.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import RobnetsError
from ._common import SampleSeededAttack, ce_loss, check_count, margin, normalize, num_classes_check, project
from ._rng import SampleRandom

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _bump(rows: int, cols: int) -> torch.Tensor:
    """Concentric rectangles around the centre, weight Σ_{k >= d} 1/(k+1)² at Chebyshev distance d."""
    if rows == 0 or cols == 0:
        return torch.zeros(rows, cols)
    levels = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, levels + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)           # tail[d] = Σ_{k >= d} w_k
    i = (torch.arange(rows) - rows // 2).abs()[:, None]
    j = (torch.arange(cols) - cols // 2).abs()[None, :]
    pattern = tail[torch.maximum(i, j)]
    return pattern / pattern.norm()


def bump_pattern(s: int) -> torch.Tensor:
    """The s×s L2 update pattern: a positive bump on the top half, a negative one below, unit L2 norm."""
    pattern = torch.cat([_bump(s // 2, s), -_bump(s - s // 2, s)], 0)
    return (pattern / pattern.norm().clamp_min(1e-12)).float()


def _window_mask(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    rows = torch.arange(h, device=vh.device)[None, :]
    cols = torch.arange(w, device=vh.device)[None, :]
    in_rows = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
    in_cols = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]       # (N, 1, h, w)


def _window_index(vh: torch.Tensor, vw: torch.Tensor, s: int):
    ar = torch.arange(s, device=vh.device)
    n_idx = torch.arange(vh.shape[0], device=vh.device)[:, None, None]
    return n_idx, (vh[:, None] + ar)[:, :, None], (vw[:, None] + ar)[:, None, :]


class _QueryDraws:
    """The uniforms of query ``i`` (stream ``(restart, i + 1)``) for the rows still alive, generated for every
    row of the run a block of queries at a time: the same numbers as drawing each query on its own, without
    ~100 tiny tensor operations per query."""

    _ELEMENTS = 1 << 20  # per block

    def __init__(self, rng: SampleRandom, restart: int, count: int, n_queries: int, device: torch.device) -> None:
        self.rng, self.restart, self.count, self.n_queries, self.device = rng, restart, count, n_queries, device
        self.length = max(1, min(256, self._ELEMENTS // max(1, len(rng) * count)))
        self.start = -1
        self.block: torch.Tensor | None = None

    def __call__(self, i: int, alive: torch.Tensor) -> torch.Tensor:
        if self.block is None or not self.start <= i < self.start + self.length:
            self.start = i
            streams = [(self.restart, j + 1) for j in range(i, min(i + self.length, self.n_queries))]
            self.block = self.rng.uniform_streams(streams, (self.count,), device=self.device)
        return self.block[i - self.start][alive]


class Square(SampleSeededAttack):
    """Square Attack, untargeted, L∞ or L2.

    Arguments: ``n_queries=5000`` (per restart), ``n_restarts=1``, ``p_init=0.8``, ``loss='margin'|'ce'``,
    ``rescale_schedule=False``, ``seed=0``, ``precision``. After a call, ``last_queries`` holds the number
    of forward passes spent on each image and ``last_success`` which images are misclassified.
    """

    salt = 6

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, n_queries: int = 5000,
                 n_restarts: int = 1, p_init: float = 0.8, loss: str = "margin", rescale_schedule: bool = False,
                 seed: int | None = 0, precision: str = "fp32") -> None:
        super().__init__(model, eps, norm=norm, seed=seed, precision=precision)
        if loss not in ("margin", "ce"):
            raise RobnetsError(f"Square loss must be 'margin' or 'ce', got {loss!r}")
        if not 0.0 < p_init <= 1.0:
            raise RobnetsError(f"p_init must lie in (0, 1], got {p_init}")
        self.n_queries = check_count("n_queries", n_queries, 0)
        self.n_restarts = check_count("n_restarts", n_restarts)
        self.p_init = float(p_init)
        self.loss_name = loss
        self.rescale_schedule = bool(rescale_schedule)
        self.last_queries: torch.Tensor | None = None
        self.last_success: torch.Tensor | None = None

    def describe(self) -> dict:
        return {**super().describe(), "n_queries": self.n_queries, "n_restarts": self.n_restarts,
                "p_init": self.p_init, "loss": self.loss_name, "rescale_schedule": self.rescale_schedule}

    def p_selection(self, iteration: int) -> float:
        """Fraction of pixels changed at ``iteration`` (0-based)."""
        if self.rescale_schedule and self.n_queries > 0:
            iteration = int(iteration / self.n_queries * 10000)
        return self.p_init / 2 ** sum(iteration > bound for bound in _P_HALVINGS)

    def _margin_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(x)
        m = margin(logits, y)
        return m, (m if self.loss_name == "margin" else -ce_loss(logits, y))

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rng = self.sample_random(x)
            n = x.shape[0]
            out = x.clone()
            queries = torch.zeros(n, dtype=torch.long, device=x.device)
            if n == 0:
                self.last_queries, self.last_success = queries, torch.zeros(0, dtype=torch.bool, device=x.device)
                return out
            logits = self.logits(x)
            num_classes_check(logits.shape[1], 2, "Square")
            success = logits.argmax(1) != y
            best_margin = torch.full((n,), float("inf"), device=x.device)
            if self.eps > 0:
                for restart in range(self.n_restarts):
                    todo = (~success).nonzero().squeeze(1)
                    if todo.numel() == 0:
                        break
                    run = self._run_linf if self.norm == "Linf" else self._run_l2
                    adv, m, q = run(x[todo], y[todo], rng.subset(todo), restart)
                    queries[todo] += q
                    better = m < best_margin[todo]
                    out[todo[better]] = adv[better]
                    best_margin[todo[better]] = m[better]
                    success[todo[m <= 0]] = True
            self.last_queries, self.last_success = queries, success
            return out

    # ------------------------------------------------------------------ L∞
    def _run_linf(self, x: torch.Tensor, y: torch.Tensor, rng: SampleRandom, restart: int):
        n, c, h, w = x.shape
        eps = self.eps
        stripes = rng.signs((restart, 0), (c, 1, w), dtype=x.dtype, device=x.device)
        x_best = (x + eps * stripes).clamp(0.0, 1.0)
        margin_best, loss_best = self._margin_and_loss(x_best, y)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        alive = (margin_best > 0).nonzero().squeeze(1)
        draws = _QueryDraws(rng, restart, 2 + c, self.n_queries, x.device)
        for i in range(self.n_queries):
            if alive.numel() == 0:
                break
            if alive.numel() == n:  # every row still queried (the common case on a robust model): no gathers
                x_a, x_best_a, y_a = x, x_best, y
            else:
                x_a, x_best_a, y_a = x[alive], x_best[alive], y[alive]
            s = min(max(int(round(math.sqrt(self.p_selection(i) * h * w))), 1), h, w)
            u = draws(i, alive)
            vh = (u[:, 0] * (h - s + 1)).long().clamp_(max=h - s)
            vw = (u[:, 1] * (w - s + 1)).long().clamp_(max=w - s)
            signs = torch.where(u[:, 2:] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None] * eps
            window = _window_mask(vh, vw, s, h, w)
            # inside the window every pixel moves to a corner of the eps-ball (x ± eps, clipped to [0, 1]);
            # x_best is already inside the ball and the box, so nothing else needs projecting
            x_new = torch.where(window, (x_a + signs).clamp_(0.0, 1.0), x_best_a)
            alive = self._accept(x_new, y_a, alive, x_best, margin_best, loss_best, queries)
        return x_best, margin_best, queries

    # ------------------------------------------------------------------ L2
    def _run_l2(self, x: torch.Tensor, y: torch.Tensor, rng: SampleRandom, restart: int):
        n, c, h, w = x.shape
        eps = self.eps
        tile = max(min(h, w) // 5, 1)
        n_h, n_w = h // tile, w // tile
        off_h, off_w = (h - n_h * tile) // 2, (w - n_w * tile) // 2
        pattern = bump_pattern(tile).to(device=x.device, dtype=x.dtype)
        signs = rng.signs((restart, 0), (n_h * n_w, c), dtype=x.dtype, device=x.device)
        flips = rng.uniform((restart, 0, 1), (n_h * n_w,), device=x.device) < 0.5
        delta = torch.zeros_like(x)
        for t in range(n_h * n_w):
            r0, c0 = off_h + (t // n_w) * tile, off_w + (t % n_w) * tile
            tile_pattern = torch.where(flips[:, t, None, None], pattern.t(), pattern)[:, None]
            delta[:, :, r0:r0 + tile, c0:c0 + tile] += tile_pattern * signs[:, t, :, None, None]
        x_best = (x + eps * normalize(delta, "L2")).clamp(0.0, 1.0)
        margin_best, loss_best = self._margin_and_loss(x_best, y)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        alive = (margin_best > 0).nonzero().squeeze(1)
        patterns: dict[int, torch.Tensor] = {}
        draws = _QueryDraws(rng, restart, 5 + c, self.n_queries, x.device)
        for i in range(self.n_queries):
            if alive.numel() == 0:
                break
            x_a, x_best_a, y_a = x[alive], x_best[alive], y[alive]
            s = max(int(round(math.sqrt(self.p_selection(i) * h * w))), 3)
            s = min(s + (s % 2 == 0), h, w)
            if s not in patterns:
                patterns[s] = bump_pattern(s).to(device=x.device, dtype=x.dtype)
            u = draws(i, alive)
            vh1, vw1, vh2, vw2 = ((u[:, k] * (size - s + 1)).long().clamp_(max=size - s)
                                  for k, size in enumerate((h, w, h, w)))
            flip = (u[:, 4] < 0.5)[:, None, None, None]
            signs = torch.where(u[:, 5:] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None]

            delta = x_best_a - x_a
            index1 = _window_index(vh1, vw1, s)
            window1 = delta[index1[0], :, index1[1], index1[2]].permute(0, 3, 1, 2)       # (m, c, s, s)
            norm_window1 = window1.square().sum((2, 3), keepdim=True).sqrt()
            norm_image = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            mask1 = _window_mask(vh1, vw1, s, h, w)
            mask2 = _window_mask(vh2, vw2, s, h, w)
            norm_windows = (delta * (mask1 | mask2)).square().sum((2, 3), keepdim=True).sqrt()
            new = torch.where(flip, patterns[s].t(), patterns[s]) * signs + window1 / (1e-12 + norm_window1)
            budget = ((eps ** 2 - norm_image ** 2).clamp_min(0.0) / c + norm_windows ** 2).sqrt()
            new = new / (1e-12 + new.square().sum((2, 3), keepdim=True).sqrt()) * budget
            delta = delta * ~mask2
            delta[index1[0], :, index1[1], index1[2]] = new.permute(0, 2, 3, 1)
            x_new = (x_a + eps * normalize(delta, "L2")).clamp(0.0, 1.0)
            alive = self._accept(x_new, y_a, alive, x_best, margin_best, loss_best, queries)
        return x_best, margin_best, queries

    # ------------------------------------------------------------------ shared
    def _accept(self, x_new, y_a, alive, x_best, margin_best, loss_best, queries) -> torch.Tensor:
        """Query x_new, keep it where the loss improved or it is misclassified; return who is still alive."""
        m_new, l_new = self._margin_and_loss(x_new, y_a)
        if alive.numel() == queries.numel():  # every row alive: update in place, no index gathers/scatters
            queries += 1
            improved = l_new < loss_best
            accept = improved | (m_new <= 0)
            torch.where(improved, l_new, loss_best, out=loss_best)
            torch.where(accept, m_new, margin_best, out=margin_best)
            torch.where(accept.view((-1,) + (1,) * (x_new.dim() - 1)), x_new, x_best, out=x_best)
            still = margin_best > 0
            return alive if bool(still.all()) else still.nonzero().squeeze(1)
        queries[alive] += 1
        improved = l_new < loss_best[alive]
        loss_best[alive] = torch.where(improved, l_new, loss_best[alive])
        accept = improved | (m_new <= 0)
        margin_best[alive] = torch.where(accept, m_new, margin_best[alive])
        view = (-1,) + (1,) * (x_new.dim() - 1)
        x_best[alive] = torch.where(accept.view(view), x_new, x_best[alive])
        return alive[margin_best[alive] > 0]
