"""Attack invariants: ε-ball, [0, 1], eval mode during the attack and modes restored, no parameter
gradients, seeded determinism, batch-size independence, precision, device and dtype from the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robnets.attacks import FGSM, MIFGSM, PGD, PGDL2, CWLinf, DeepFool, create_attack, parse_attack_spec
from robnets.attacks.cw import margin_loss
from robnets.errors import RobnetsError

EPS = 8 / 255


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


ATTACKS = {
    "fgsm": lambda m: FGSM(m, eps=EPS),
    "pgd": lambda m: PGD(m, eps=EPS, alpha=2 / 255, steps=5, seed=0),
    "pgd_no_random_start": lambda m: PGD(m, eps=EPS, alpha=2 / 255, steps=5, random_start=False),
    "pgdl2": lambda m: PGDL2(m, eps=0.5, alpha=0.2, steps=5, seed=0),
    "mifgsm": lambda m: MIFGSM(m, eps=EPS, alpha=2 / 255, steps=5),
    "cw": lambda m: CWLinf(m, eps=EPS, alpha=2 / 255, steps=5, seed=0),
    "deepfool": lambda m: DeepFool(m, eps=EPS, steps=10),
}


def _norm(delta, threat_model):
    flat = delta.flatten(1)
    return flat.abs().amax(1) if threat_model == "Linf" else flat.norm(dim=1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_adversarial_examples_stay_in_the_ball_and_in_unit_range(tiny_robnet, name):
    attack = ATTACKS[name](tiny_robnet)
    x, y = _data()
    if name == "deepfool":  # a minimal-perturbation attack leaves already-misclassified points alone
        with torch.no_grad():
            y = tiny_robnet.eval()(x).argmax(1)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (_norm(x_adv - x, attack.threat_model) <= attack.eps + 1e-6).all()
    assert not torch.equal(x_adv, x)
    with torch.no_grad():
        loss_clean = F.cross_entropy(tiny_robnet(x), y)
        loss_adv = F.cross_entropy(tiny_robnet(x_adv), y)
    assert loss_adv > loss_clean  # the attack does its job


def test_inputs_at_the_boundary_stay_inside(tiny_robnet):
    x = torch.zeros(4, 3, 32, 32)
    x[2:] = 1.0
    x_adv = PGD(tiny_robnet, eps=EPS, steps=3, seed=1)(x, torch.arange(4))
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= EPS + 1e-7


class _ModeProbe(nn.Module):
    """Records the mode it was in at every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.inner(x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_model_runs_in_eval_mode_and_every_mode_is_restored(tiny_robnet, name):
    probe = _ModeProbe(tiny_robnet)
    probe.train()
    tiny_robnet.cells[0].eval()  # a mixed-mode model: the attack must restore it exactly
    before = {n: m.training for n, m in probe.named_modules()}
    stats_before = tiny_robnet.stem[1].running_mean.clone()
    ATTACKS[name](probe)(*_data())
    assert probe.seen and not any(probe.seen)
    assert {n: m.training for n, m in probe.named_modules()} == before
    assert torch.equal(tiny_robnet.stem[1].running_mean, stats_before)  # BN statistics untouched
    assert all(p.grad is None for p in probe.parameters())


def test_mode_is_restored_after_an_error(tiny_robnet):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(model, steps=1)(*_data(2))
    assert model.training and model[0].training


def test_seeded_random_start_is_deterministic(tiny_robnet):
    x, y = _data()
    a = PGD(tiny_robnet, eps=EPS, steps=2, seed=7)(x, y)
    b = PGD(tiny_robnet, eps=EPS, steps=2, seed=7)(x, y)
    c = PGD(tiny_robnet, eps=EPS, steps=2, seed=8)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    attack = PGD(tiny_robnet, eps=EPS, steps=2, seed=7)
    first, second = attack(x, y), attack(x, y)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the stream advances call by call
    attack.set_seed(7)
    assert torch.equal(attack(x, y), a)


def test_pgd_equals_a_minimal_reference_loop(tiny_robnet):
    """Same random start (same seeded generator), same steps, same projection as the textbook loop."""
    x, y = _data()
    alpha, steps = 2 / 255, 4
    ours = PGD(tiny_robnet, eps=EPS, alpha=alpha, steps=steps, seed=3)(x, y)
    g = torch.Generator().manual_seed(3)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 * EPS - EPS)).clamp(0, 1)
    tiny_robnet.eval()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(tiny_robnet(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    assert torch.equal(ours, x_adv)


@pytest.mark.parametrize("name", ["pgd_no_random_start", "mifgsm", "fgsm"])
def test_results_do_not_depend_on_the_batch_size(tiny_robnet, name):
    x, y = _data(8)
    attack = ATTACKS[name](tiny_robnet)
    whole = attack(x, y)
    halves = torch.cat([attack(x[:4], y[:4]), attack(x[4:], y[4:])])
    assert (whole - halves).abs().max() <= 1e-6


def test_targeted_pgd_moves_toward_the_target(tiny_robnet):
    x, _ = _data()
    target = torch.full((8,), 3)
    x_adv = PGD(tiny_robnet, eps=EPS, steps=5, targeted=True, seed=0)(x, target)
    with torch.no_grad():
        before = F.softmax(tiny_robnet(x), 1)[:, 3]
        after = F.softmax(tiny_robnet(x_adv), 1)[:, 3]
    assert (after > before).float().mean() >= 0.75


def test_bf16_is_opt_in_and_output_keeps_the_input_dtype(tiny_robnet):
    seen = []
    hook = tiny_robnet.stem[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = _data(4)
    x_fp32 = PGD(tiny_robnet, steps=1, seed=0)(x, y)
    assert seen == [torch.float32]
    x_bf16 = PGD(tiny_robnet, steps=1, seed=0, precision="bf16")(x, y)
    hook.remove()
    assert seen[-1] == torch.bfloat16
    assert x_bf16.dtype == torch.float32 and (x_bf16 - x).abs().max() <= EPS + 1e-6
    assert x_fp32.dtype == torch.float32
    with pytest.raises(RobnetsError, match="precision"):
        PGD(tiny_robnet, precision="fp16")


def test_dtype_comes_from_the_input(tiny_robnet):
    model = tiny_robnet.double()
    x, y = _data(2)
    x_adv = PGD(model, steps=2, seed=0)(x.double(), y)
    assert x_adv.dtype == torch.float64 and (x_adv - x.double()).abs().max() <= EPS + 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inputs_give_cuda_outputs(tiny_robnet):
    model = tiny_robnet.cuda()
    x, y = _data(4)
    x_adv = PGD(model, steps=2, seed=0)(x.cuda(), y)
    assert x_adv.is_cuda and (x_adv.cpu() - x).abs().max() <= EPS + 1e-6


def test_bad_inputs_fail_with_one_clear_line(tiny_robnet):
    attack = PGD(tiny_robnet, steps=1)
    x, y = _data(2)
    with pytest.raises(RobnetsError, match=r"must lie in \[0, 1\]"):
        attack(x * 255, y)
    with pytest.raises(RobnetsError, match="one label per image"):
        attack(x, y[:1])
    with pytest.raises(RobnetsError, match="float NCHW"):
        attack(x[0], y)
    with pytest.raises(RobnetsError, match="eps must be >= 0"):
        PGD(tiny_robnet, eps=-1)
    with pytest.raises(RobnetsError, match="steps must be a non-negative integer"):
        PGD(tiny_robnet, steps=2.5)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_work_inside_no_grad_and_refuse_inference_mode(tiny_robnet, name):
    """Evaluation loops often run under torch.no_grad(): the attack turns gradients on for itself (same
    result as outside); under torch.inference_mode() no gradient can exist, which one clear line says."""
    x, y = _data(4)
    expected = ATTACKS[name](tiny_robnet)(x, y)
    with torch.no_grad():
        got = ATTACKS[name](tiny_robnet)(x, y)
    assert torch.equal(got, expected)
    with torch.inference_mode(), pytest.raises(RobnetsError, match="outside inference_mode"):
        ATTACKS[name](tiny_robnet)(x, y)


def test_autoattack_attacks_work_inside_no_grad(tiny_robnet):
    from robnets.attacks import APGD, APGDT, FAB

    x, y = _data(4)
    for make in (lambda: APGD(tiny_robnet, steps=3), lambda: APGDT(tiny_robnet, steps=3, target_classes=2),
                 lambda: FAB(tiny_robnet, steps=3, target_classes=2)):
        expected = make()(x, y)
        with torch.no_grad():
            assert torch.equal(make()(x, y), expected)


def test_attack_names():
    assert parse_attack_spec("pgd20") == ("pgd", 20)
    assert parse_attack_spec("PGD-100") == ("pgd", 100)
    assert parse_attack_spec("pgdl2-20") == ("pgdl2", 20)
    assert parse_attack_spec("clean") == ("clean", None)
    with pytest.raises(RobnetsError, match="unknown attack 'jsma'"):
        parse_attack_spec("jsma")
    assert parse_attack_spec("cw30") == ("cw", 30) and parse_attack_spec("deepfool") == ("deepfool", None)
    attack = create_attack("pgd7", nn.Linear(1, 1), eps=4 / 255, alpha=1 / 255)
    assert isinstance(attack, PGD) and attack.steps == 7 and attack.eps == 4 / 255
    assert create_attack("clean", nn.Linear(1, 1)) is None
    assert create_attack("mifgsm", nn.Linear(1, 1)).steps == 10


def test_cw_margin_loss():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, 1.0]])
    assert torch.allclose(margin_loss(logits, torch.tensor([0, 0])), torch.tensor([0.0, 4.0]))
    assert torch.allclose(margin_loss(logits, torch.tensor([0, 0]), kappa=1.0), torch.tensor([-0.5, 4.0]))
    assert torch.allclose(margin_loss(logits, torch.tensor([0, 0]), kappa=0.2), torch.tensor([-0.2, 4.0]))


def test_deepfool_finds_the_boundary_of_a_linear_model():
    """For a linear binary classifier the L∞ distance to the boundary is |f| / ||w||_1: DeepFool reaches it."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.rand(6, 3, 4, 4) * 0.5 + 0.25
    with torch.no_grad():
        y = linear(x).argmax(1)
        w = linear[1].weight[1] - linear[1].weight[0]
        margin = (linear(x)[:, 1] - linear(x)[:, 0]).abs()
    distance = margin / w.abs().sum()
    x_adv = DeepFool(linear, eps=1.0, overshoot=0.0)(x, y)
    found = (x_adv - x).flatten(1).abs().amax(1)
    with torch.no_grad():
        assert (linear(x_adv).argmax(1) != y).all()
    assert torch.allclose(found, distance, rtol=0.02, atol=1e-3)
    bounded = DeepFool(linear, eps=float(distance.min()) / 2)(x, y)  # every boundary beyond eps: no success
    with torch.no_grad():
        assert (linear(bounded).argmax(1) == y).all()


def test_evaluation_keeps_per_example_correctness_for_paired_comparisons(tiny_robnet):
    from robnets.attacks import PGD
    from robnets.data import load_sample
    from robnets.evaluation import evaluate

    data = load_sample()
    clean, pgd = evaluate(tiny_robnet, data, {"clean": None, "pgd": PGD(tiny_robnet, steps=2, seed=0)}, n=24,
                          batch_size=10, progress=False, record_examples=True)
    for result in (clean, pgd):
        assert result.correct_mask.dtype == torch.bool and result.correct_mask.shape == (24,)
        assert int(result.correct_mask.sum()) == result.correct and "correct_mask" not in result.to_dict()
    x, y = data.batch(0, 24)
    with torch.no_grad():
        assert torch.equal(clean.correct_mask, tiny_robnet(x).argmax(1) == y)
    plain, = evaluate(tiny_robnet, data, {"clean": None}, n=24, progress=False)
    assert plain.correct_mask is None and plain.correct == clean.correct


def test_paired_comparisons_equal_their_textbook_definitions():
    from scipy import stats

    from robnets.errors import RobnetsError
    from robnets.evaluation import mcnemar, paired_difference

    a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1] * 10, dtype=bool)
    b = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1] * 10, dtype=bool)
    m = mcnemar(a, b)
    assert (m["n"], m["only_a"], m["only_b"]) == (100, 30, 10)
    assert m["difference"] == pytest.approx(20.0) and m["difference_ci"][0] < 20 < m["difference_ci"][1]
    assert m["p"] == pytest.approx(stats.binomtest(30, 40, 0.5).pvalue) and m["p"] < 0.01
    assert mcnemar(a, a)["p"] == 1.0 and mcnemar(a, a)["difference"] == 0
    d = paired_difference([27.3, 26.7, 28.0], [24.2, 25.6, 25.0])
    diffs = np.array([3.1, 1.1, 3.0])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert d["mean"] == pytest.approx(diffs.mean()) and d["ci"] == pytest.approx([diffs.mean() - half,
                                                                                  diffs.mean() + half])
    assert d["p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    with pytest.raises(RobnetsError, match="same points"):
        mcnemar(a, b[:5])
    with pytest.raises(RobnetsError, match="at least two"):
        paired_difference([1.0], [0.0])
