"""AutoAttack built in-tree (robnets.attacks.autoattack): APGD-CE/DLR/T, FAB/FAB-T, Square and the cascade.

A tiny 2-layer CNN is trained for about a second on 400 of the embedded CIFAR-10 test images; the attacks
run on those images (where it has ~75% accuracy) with small iteration budgets so the module stays fast on
one CPU thread.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robnets.attacks import PGD
from robnets.attacks.autoattack import (APGD, APGDT, FAB, AutoAttack, Square, project_onto_hyperplane_in_box)
from robnets.attacks.autoattack._rng import SampleRandom
from robnets.data import load_sample
from robnets.evaluation.crosscheck import tiny_cnn
from robnets.errors import RobnetsError

EPS = 2 / 255
L2_EPS = 0.25


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10))


@pytest.fixture(scope="module")
def trained():
    """(model, x, y): the CNN trained for 20 quick epochs on the first 400 sample images."""
    torch.set_num_threads(1)
    x, y = load_sample().batch(0, 400)
    model = tiny_cnn(x, y, width=8, epochs=20, lr=3e-3, adversarial=False)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert 0.5 < accuracy < 0.95, accuracy  # non-trivial: something to attack, something misclassified
    return model, x, y


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _norm(delta, norm):
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def _cheap(aa: AutoAttack) -> AutoAttack:
    """Small budgets for tests (the published defaults are 100 iterations / 9 targets / 5000 queries)."""
    for name in ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t"):
        aa.attacks[name].n_iter = 8
    aa.attacks["apgd-t"].n_target_classes = 3
    aa.attacks["fab-t"].n_target_classes = 2
    aa.attacks["square"].n_queries = 60
    return aa


class _ModeProbe(nn.Module):
    """Records the training flag and grad mode at every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.dropout = nn.Dropout(0.0)
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.inner(self.dropout(x))


ATTACKS = {
    "apgd-ce-linf": lambda m: APGD(m, eps=EPS, n_iter=5, seed=0),
    "apgd-dlr-l2": lambda m: APGD(m, norm="L2", eps=L2_EPS, n_iter=5, loss="dlr", seed=0),
    "apgd-t-linf": lambda m: APGDT(m, eps=EPS, n_iter=4, n_target_classes=2, seed=0),
    "apgd-t-l2": lambda m: APGDT(m, norm="L2", eps=L2_EPS, n_iter=4, n_target_classes=2, seed=0),
    "fab-t-linf": lambda m: FAB(m, eps=EPS, n_iter=4, targeted=True, n_target_classes=2, seed=0),
    "fab-l2": lambda m: FAB(m, norm="L2", eps=L2_EPS, n_iter=4, n_restarts=2, seed=0),
    "square-linf": lambda m: Square(m, eps=EPS, n_queries=30, seed=0),
    "square-l2": lambda m: Square(m, norm="L2", eps=L2_EPS, n_queries=30, seed=0),
}


# ---------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_keeps_the_invariants(trained, name):
    model, x, y = trained
    x, y = x[:16], y[:16]
    probe = _ModeProbe(model).train()
    probe.dropout.eval()  # mixed modes must come back exactly
    before = {n: m.training for n, m in probe.named_modules()}
    attack = ATTACKS[name](probe)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_norm(x_adv - x, attack.threat_model) <= attack.eps + 1e-6).all()
    assert probe.seen and not any(probe.seen)                       # eval mode during the attack
    assert {n: m.training for n, m in probe.named_modules()} == before
    assert all(p.grad is None for p in probe.parameters())
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_float64_inputs_stay_float64(trained):
    model, x, y = trained
    model64 = _tiny_cnn().double()
    model64.load_state_dict(model.state_dict())
    x64 = x[:4].double()
    for attack in (APGD(model64, eps=EPS, n_iter=2), Square(model64, eps=EPS, n_queries=3),
                   FAB(model64, eps=EPS, n_iter=2, targeted=True, n_target_classes=1)):
        x_adv = attack(x64, y[:4])
        assert x_adv.dtype == torch.float64 and (x_adv - x64).abs().max() <= EPS + 1e-12


def test_bad_arguments_fail_with_one_clear_line(trained):
    model, x, y = trained
    with pytest.raises(RobnetsError, match="norm must be one of"):
        APGD(model, norm="L1")
    with pytest.raises(RobnetsError, match="loss must be one of"):
        APGD(model, loss="cw")
    with pytest.raises(RobnetsError, match="must lie in"):
        APGD(model)(x[:2] * 255, y[:2])
    with pytest.raises(RobnetsError, match="sample_ids"):
        APGD(model)(x[:2], y[:2], sample_ids=torch.arange(3))
    with pytest.raises(RobnetsError, match="version must be one of"):
        AutoAttack(model, version="fast")
    with pytest.raises(RobnetsError, match="use version='custom'"):
        AutoAttack(model, attacks_to_run=["apgd-ce"])
    with pytest.raises(RobnetsError, match="attacks_to_run must be distinct names"):
        AutoAttack(model, version="custom", attacks_to_run=["apgd-ce", "pgd"])
    with pytest.raises(RobnetsError, match="one label per image"):
        AutoAttack(model, log=None).run_standard_evaluation(x[:4], y[:3])


def test_published_versions():
    model = _tiny_cnn()
    std = AutoAttack(model, version="standard", log=None)
    assert std.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (std.attacks["apgd-ce"].n_iter, std.attacks["apgd-ce"].n_restarts) == (100, 1)
    assert (std.attacks["apgd-t"].n_target_classes, std.attacks["apgd-t"].n_restarts) == (9, 1)
    assert (std.attacks["fab-t"].n_target_classes, std.attacks["fab-t"].n_iter) == (9, 100)
    assert std.attacks["fab-t"].targeted and (std.attacks["fab-t"].alpha_max, std.attacks["fab-t"].eta,
                                              std.attacks["fab-t"].beta) == (0.1, 1.05, 0.9)
    assert (std.attacks["square"].n_queries, std.attacks["square"].p_init) == (5000, 0.8)
    plus = AutoAttack(model, version="plus", norm="L2", eps=0.5, log=None)
    assert plus.attacks_to_run == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [plus.attacks[n].n_restarts for n in ("apgd-ce", "apgd-dlr", "fab")] == [5, 5, 5]
    assert all(plus.attacks[n].norm == "L2" and plus.attacks[n].eps == 0.5 for n in plus.attacks_to_run)
    rand = AutoAttack(model, version="rand", log=None)
    assert rand.attacks_to_run == ["apgd-ce", "apgd-dlr"]
    assert all(rand.attacks[n].eot_iter == 20 and rand.attacks[n].n_restarts == 1 for n in rand.attacks_to_run)
    # the step-size checkpoints of APGD with 100 iterations: 22, 19, 16, ... down to 6
    lengths = APGD(model).checkpoint_intervals()
    assert lengths[:6] == [22, 19, 16, 13, 10, 7] and set(lengths[6:]) == {6} and sum(lengths) >= 100


# ---------------------------------------------------------------------------------------------- building blocks
def test_random_draws_depend_only_on_seed_and_sample_id():
    ids = torch.tensor([5, 9, 2, 40])
    whole = SampleRandom(3, ids).uniform((1, 2), (7,))
    parts = torch.cat([SampleRandom(3, ids[:1]).uniform((1, 2), (7,)), SampleRandom(3, ids[1:]).uniform((1, 2), (7,))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, SampleRandom(4, ids).uniform((1, 2), (7,)))
    assert not torch.equal(whole, SampleRandom(3, ids).uniform((1, 3), (7,)))
    many = SampleRandom(0, torch.arange(64)).uniform((0,), (1000,))
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01
    z = SampleRandom(0, torch.arange(64)).normal((0,), (1000,))
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_hyperplane_projection_is_the_minimal_norm_point_in_the_box():
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(0)
    d_dim = 5
    for trial in range(30):
        p = torch.rand(1, d_dim, generator=g, dtype=torch.float64)
        w = torch.randn(1, d_dim, generator=g, dtype=torch.float64)
        b = (w * torch.rand(1, d_dim, generator=g, dtype=torch.float64)).sum(1)
        r = (b - (w * p).sum(1)).item()
        for norm in ("Linf", "L2"):
            d = project_onto_hyperplane_in_box(p, w, b, norm)[0].double()
            assert ((p[0] + d) >= -1e-6).all() and ((p[0] + d) <= 1 + 1e-6).all()
            assert abs((w[0] * d).sum().item() - r) < 1e-4              # reaches the hyperplane (feasible case)
            lo, hi = (-p[0]).tolist(), (1 - p[0]).tolist()
            if norm == "Linf":
                c = [0.0] * d_dim + [1.0]
                a_ub = [[(1 if j == i else 0) for j in range(d_dim)] + [-1] for i in range(d_dim)]
                a_ub += [[(-1 if j == i else 0) for j in range(d_dim)] + [-1] for i in range(d_dim)]
                res = linprog(c, A_ub=a_ub, b_ub=[0] * (2 * d_dim), A_eq=[w[0].tolist() + [0]], b_eq=[r],
                              bounds=list(zip(lo, hi)) + [(0, None)])
                assert d.abs().max().item() <= res.fun + 1e-5
            else:  # KKT: d = clip(λ w) for one λ
                nz = w[0].abs() > 1e-9
                lam = (d[nz] / w[0][nz])
                free = (d[nz] > torch.tensor(lo)[nz] + 1e-7) & (d[nz] < torch.tensor(hi)[nz] - 1e-7)
                if free.sum() > 1:
                    assert lam[free].max() - lam[free].min() < 1e-4
    # no point of the box reaches the hyperplane: every coordinate goes to the helpful edge
    p, w, b = torch.full((1, 3), 0.5), torch.ones(1, 3), torch.tensor([10.0])
    assert torch.equal(project_onto_hyperplane_in_box(p, w, b, "Linf"), torch.full((1, 3), 0.5))
    assert torch.equal(project_onto_hyperplane_in_box(p, w, b, "L2"), torch.full((1, 3), 0.5))


def test_newton_breakpoint_solver_equals_the_sort_based_one():
    """FAB's projection finds its step length by Newton's method (a few passes over each row instead of a
    sort); it must give the sort-based solution, including rows that cannot reach the hyperplane, rows already
    on it, zero weights, and rows whose solution lies past most breakpoints."""
    from robnets.attacks.autoattack.fab import _solve_newton, _solve_sorted

    g = torch.Generator().manual_seed(1)
    n, d = 64, 3072
    aw = torch.rand(n, d, generator=g) * (torch.rand(n, d, generator=g) > 0.1)      # some zero weights
    cap = torch.rand(n, d, generator=g) * (aw > 0)
    total = (aw * cap).sum(1)
    need = total * torch.rand(n, generator=g) ** 0.25                                # far past most breakpoints
    need[:4] = 0.0                                                                   # already on the hyperplane
    need[4:8] = total[4:8] * 1.5                                                     # unreachable
    for k, unit_k in (((aw > 0).float(), True), (aw, False)):                       # L∞ and L2
        t_newton, t_sorted = _solve_newton(aw, k, cap, need, unit_k=unit_k), _solve_sorted(aw, k, cap, need)
        assert t_newton is not None
        assert (t_newton[:4] == 0).all() and (t_newton[4:8] == 1e30).all()
        assert torch.allclose(t_newton[8:], t_sorted[8:], rtol=1e-4, atol=0)  # near saturation: ill-conditioned
        step_newton, step_sorted = torch.minimum(t_newton[:, None] * k, cap), torch.minimum(t_sorted[:, None] * k, cap)
        assert torch.allclose(step_newton, step_sorted, rtol=1e-4, atol=1e-6)
        assert torch.equal(step_newton[4:8], cap[4:8])                              # every coordinate to the edge
        assert torch.allclose((aw * step_newton).sum(1)[8:], need[8:], rtol=1e-4)
    assert _solve_newton(aw, aw, cap, need, max_iter=1) is None                     # not settled: the caller sorts


# ---------------------------------------------------------------------------------------------- strength
def test_apgd_ce_is_at_least_as_strong_as_pgd_with_the_same_iterations(trained):
    model, x, y = trained
    x, y = x[:128], y[:128]
    steps = 10
    pgd = _accuracy(model, PGD(model, eps=EPS, alpha=EPS / 4, steps=steps, seed=0)(x, y), y)
    apgd = _accuracy(model, APGD(model, eps=EPS, n_iter=steps, seed=0)(x, y), y)
    assert apgd <= pgd + 0.01, (apgd, pgd)
    assert apgd < _accuracy(model, x, y) - 0.1


def test_apgd_t_reaches_the_chosen_target_more_often_than_apgd_ce(trained):
    model, x, y = trained
    x, y = x[:128], y[:128]
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    order = logits.argsort(1, descending=True)
    target = torch.where(order[:, 2] == y, order[:, 3], order[:, 2])   # the third most likely wrong class
    untargeted = APGD(model, eps=EPS, n_iter=10, seed=0)(x, y)
    targeted = APGDT(model, eps=EPS, n_iter=10, seed=0)(x, y, targets=target)
    with torch.no_grad():
        hits_ce = ((model(untargeted).argmax(1) == target) & correct).sum().item()
        hits_t = ((model(targeted).argmax(1) == target) & correct).sum().item()
    assert hits_t > hits_ce + 5, (hits_t, hits_ce)
    with pytest.raises(RobnetsError, match="different from the true labels"):
        APGDT(model, eps=EPS, n_iter=1)(x[:4], y[:4], targets=y[:4])


class _NoBackward(nn.Module):
    """Forward passes only: raises if called with grad enabled or if anything backpropagates through it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x):
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("Square must query the model under torch.no_grad")
        self.images += x.shape[0]
        out = self.inner(x)
        if out.requires_grad:
            out.register_hook(lambda grad: (_ for _ in ()).throw(AssertionError("backward through the model")))
        return out


@pytest.mark.parametrize("norm, eps", [("Linf", 4 / 255), ("L2", 0.5)])
def test_square_uses_only_forward_passes_and_lowers_accuracy(trained, norm, eps):
    model, x, y = trained
    x, y = x[:48], y[:48]
    wrapped = _NoBackward(model)
    attack = Square(wrapped, norm=norm, eps=eps, n_queries=300, seed=0)
    x_adv = attack(x, y)
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.1
    assert (_norm(x_adv - x, norm) <= eps + 1e-6).all()
    assert attack.last_queries.max() <= 301 and wrapped.images <= 48 * 302
    assert (attack.last_queries[~attack.last_success] == 301).all()   # unfooled points used the whole budget


def test_fab_t_counts_only_points_within_eps(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    fab = FAB(model, eps=EPS, n_iter=10, targeted=True, n_target_classes=2, seed=0)
    raw, norms = fab.min_norm(x, y)
    clipped = fab(x, y)
    with torch.no_grad():
        raw_fooled = model(raw).argmax(1) != y
        clipped_fooled = model(clipped).argmax(1) != y
    assert (raw_fooled == torch.isfinite(norms)).all()
    beyond = raw_fooled & (norms > EPS)
    assert beyond.sum() >= 3                                   # minimum-norm points outside the ball exist ...
    assert torch.equal(clipped_fooled, raw_fooled & (norms <= EPS))   # ... and do not count
    assert torch.equal(clipped[~clipped_fooled], x[~clipped_fooled])
    assert (_norm(clipped - x, "Linf") <= EPS + 1e-6).all()
    aa = AutoAttack(model, eps=EPS, version="custom", attacks_to_run=["fab-t"], log=None)
    aa.attacks["fab-t"] = fab
    aa.run_standard_evaluation(x, y, bs=64)
    assert torch.equal(~aa.robust_flags, raw_fooled & (norms <= EPS))


# ---------------------------------------------------------------------------------------------- the cascade
class _Recorder:
    """Wraps an attack and records the sample ids of every call (optionally fails after some calls)."""

    def __init__(self, attack, fail_after: int | None = None):
        self.attack = attack
        self.ids: list[int] = []
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, x, y, sample_ids=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.ids += sample_ids.tolist()
        return self.attack(x, y, sample_ids=sample_ids)

    def describe(self):
        return self.attack.describe()


ALL = ["apgd-ce", "apgd-t", "fab-t", "square"]


def _autoattack(model, attacks=ALL, record=True, fail=None, log=None, **kwargs) -> AutoAttack:
    aa = _cheap(AutoAttack(model, eps=EPS, version="custom", attacks_to_run=attacks, seed=0, log=log, **kwargs))
    if record:
        for name in aa.attacks:
            aa.attacks[name] = _Recorder(aa.attacks[name], fail_after=(fail or {}).get(name))
    return aa


def test_cascade_history_and_attacks_only_on_robust_points(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    model.train()
    aa = _autoattack(model)
    x_adv = aa.run_standard_evaluation(x, y, bs=40)
    assert model.training and all(m.training for m in model.modules())   # mode restored
    model.eval()
    history = aa.robust_accuracy_history
    assert [name for name, _ in history] == ["clean"] + ALL
    accs = [acc for _, acc in history]
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert history[0][1] == pytest.approx(_accuracy(model, x, y))
    assert history[-1][1] == aa.robust_accuracy == pytest.approx(_accuracy(model, x_adv, y))
    assert accs[-1] < accs[0]
    with torch.no_grad():
        assert torch.equal(aa.robust_flags, model(x_adv).argmax(1) == y)
    assert (_norm(x_adv - x, "Linf") <= EPS + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    # every attack ran exactly on the points still robust before it: the clean-correct ones for the first,
    # then those the previous attacks did not fool (the points the next attack got, or the final flags)
    with torch.no_grad():
        robust = set((model(x).argmax(1) == y).nonzero().squeeze(1).tolist())
    for k, (name, acc) in enumerate(history[1:]):
        assert sorted(aa.attacks[name].ids) == sorted(robust)
        later = ALL[k + 1:]
        after = set(aa.attacks[later[0]].ids) if later else set(aa.robust_flags.nonzero().squeeze(1).tolist())
        assert after <= robust and len(after) == round(acc * 64)
        assert aa.attack_counts[name] == {"attacked": len(robust), "fooled": len(robust) - len(after)}
        robust = after


def test_apgd_results_do_not_depend_on_the_batch_size(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    runs = {}
    for bs in (8, 32):
        aa = _autoattack(model, attacks=["apgd-ce"], record=False)
        x_adv = aa.run_standard_evaluation(x, y, bs=bs)
        runs[bs] = (aa.robust_flags, x_adv)
    assert torch.equal(runs[8][0], runs[32][0])
    assert (runs[8][1] - runs[32][1]).abs().max() <= 1e-6
    assert not runs[8][0].all()


def test_fixed_seed_is_deterministic(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    a = APGD(model, eps=EPS, n_iter=5, seed=3)(x, y)
    b = APGD(model, eps=EPS, n_iter=5, seed=3)(x, y)
    c = APGD(model, eps=EPS, n_iter=5, seed=4)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    attack = APGD(model, eps=EPS, n_iter=5, seed=3)
    first, second = attack(x, y), attack(x, y)
    assert torch.equal(first, a) and not torch.equal(second, first)   # the stream advances call by call
    attack.set_seed(3)
    assert torch.equal(attack(x, y), a)
    ids = torch.arange(100, 148)
    assert torch.equal(attack(x, y, sample_ids=ids), attack(x, y, sample_ids=ids))  # keyed by ids only
    runs = []
    for _ in range(2):
        aa = _autoattack(model, attacks=["apgd-ce", "square"], record=False)
        runs.append((aa.run_standard_evaluation(x, y, bs=48), aa.robust_accuracy_history))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_resume_from_a_state_file_equals_an_uninterrupted_run(trained, tmp_path):
    model, x, y = trained
    x, y = x[:64], y[:64]
    reference = _autoattack(model, record=False)
    x_ref = reference.run_standard_evaluation(x, y, bs=64)   # other batches: the whole cascade is bs-independent

    state = tmp_path / "aa_state.json"
    first = _autoattack(model, attacks=ALL[:2])
    first.run_standard_evaluation(x, y, bs=24, state_path=state)
    saved = json.loads(state.read_text())
    assert saved["finished"] == ALL[:2] and saved["in_progress"] is None
    assert saved["robust_flags"] == "".join("1" if f else "0" for f in first.robust_flags.tolist())
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))   # atomic writes left nothing

    # the full list, interrupted after the first batch of fab-t
    second = _autoattack(model, fail={"fab-t": 1})
    with pytest.raises(KeyboardInterrupt):
        second.run_standard_evaluation(x, y, bs=24, state_path=state)
    assert second.attacks["apgd-ce"].calls == second.attacks["apgd-t"].calls == 0   # not run again
    assert json.loads(state.read_text())["in_progress"] == "fab-t"

    third = _autoattack(model)
    x_resumed = third.run_standard_evaluation(x, y, bs=24, state_path=state)
    assert third.attacks["apgd-ce"].calls == third.attacks["apgd-t"].calls == 0
    assert not set(third.attacks["fab-t"].ids) & set(second.attacks["fab-t"].ids)  # finished batch not redone
    assert torch.equal(third.robust_flags, reference.robust_flags)
    assert third.robust_accuracy_history == reference.robust_accuracy_history
    assert torch.equal(x_resumed, x_ref)

    # a finished state only replays; other data or settings are refused
    again = _autoattack(model)
    assert torch.equal(again.run_standard_evaluation(x, y, bs=24, state_path=state), x_ref)
    assert all(again.attacks[n].calls == 0 for n in ALL)
    with pytest.raises(RobnetsError, match="other images or labels"):
        _autoattack(model).run_standard_evaluation(x, (y + 1) % 10, bs=24, state_path=state)
    other = _autoattack(model)
    other.attacks["apgd-ce"].attack.n_iter = 9
    with pytest.raises(RobnetsError, match="other settings"):
        other.run_standard_evaluation(x, y, bs=24, state_path=state)


def test_individual_evaluation(trained):
    model, x, y = trained
    x, y = x[:32], y[:32]
    aa = _autoattack(model, attacks=["apgd-ce", "square"], record=False)
    results = aa.run_standard_evaluation_individual(x, y, bs=32)
    assert set(results) == {"apgd-ce", "square"}
    for name, x_adv in results.items():
        assert aa.individual_accuracy[name] == pytest.approx(_accuracy(model, x_adv, y))
    assert aa.individual_accuracy["apgd-ce"] <= aa.individual_accuracy["square"]


def test_cross_check_against_torchattacks(trained):
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is not installed, so APGD-CE cannot be cross-checked against it")
    model, x, y = trained
    x, y = x[:128], y[:128]
    ours = _accuracy(model, APGD(model, eps=EPS, n_iter=20, seed=0)(x, y), y)
    theirs = _accuracy(model, torchattacks.APGD(model, norm="Linf", eps=EPS, steps=20, n_restarts=1, loss="ce",
                                                seed=0)(x, y), y)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


class _Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input at every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_checks_and_the_rand_version(trained):
    model, x, y = trained
    x, y = x[:16], y[:16]
    messages = []
    aa = _autoattack(_Noisy(model), attacks=["apgd-ce"], record=False, log=messages.append)
    aa.run_standard_evaluation(x, y, bs=16)
    assert any("randomized" in m and "version='rand'" in m for m in messages)
    messages.clear()
    aa = _autoattack(nn.Sequential(model, nn.Softmax(dim=1)), attacks=["apgd-ce"], record=False,
                     log=messages.append)
    aa.run_standard_evaluation(x, y, bs=16)
    assert any("probabilities" in m for m in messages)
    messages.clear()
    torch.manual_seed(0)
    rand = AutoAttack(_Noisy(model), eps=EPS, version="rand", log=messages.append)
    for name in rand.attacks_to_run:
        rand.attacks[name].n_iter, rand.attacks[name].eot_iter = 3, 2
    rand.run_standard_evaluation(x, y, bs=16)
    assert [n for n, _ in rand.robust_accuracy_history] == ["clean", "apgd-ce", "apgd-dlr"]
    assert not any("randomized" in m for m in messages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inputs_give_cuda_outputs(trained):
    model, x, y = trained
    gpu = _tiny_cnn().cuda()
    gpu.load_state_dict(model.state_dict())
    x, y = x[:32].cuda(), y[:32].cuda()
    aa = _autoattack(gpu, record=False)
    x_adv = aa.run_standard_evaluation(x, y, bs=16)
    assert x_adv.is_cuda and (x_adv - x).abs().max() <= EPS + 1e-6
    assert aa.robust_accuracy == pytest.approx(_accuracy(gpu, x_adv, y))
