"""AutoAttack through the reference implementation (pyautoattack): the cascade on real CIFAR-10 points with the
published robust weights, the guarantees the wrapper adds (modes, ε-ball, re-measured accuracy, per-attack
seconds), resumable state tied to its subject, and the single attacks.

A tiny 2-layer CNN trained in about a second on 400 embedded CIFAR-10 test images keeps most tests fast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import robnets
from robnets.attacks import APGD, APGDT, FAB, AutoAttack, Square, create_attack
from robnets.attacks.reference_autoattack import reference_module
from robnets.data import load_sample
from robnets.errors import RobnetsError

from .helpers import tiny_cnn

EPS = 2 / 255


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """(model, x, y): the CNN trained for 20 quick epochs on the first 400 sample images."""
    x, y = load_sample().batch(0, 400)
    model = tiny_cnn(x, y, width=8, epochs=20, lr=3e-3, adversarial=False)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert 0.5 < accuracy < 0.95, accuracy
    return model, x, y


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _ball(delta, norm):
    flat = delta.flatten(1)
    return {"Linf": flat.abs().amax(1), "L2": flat.norm(dim=1), "L1": flat.abs().sum(1)}[norm]


@pytest.mark.slow
def test_reference_engine_on_real_points_with_the_published_robust_weights():
    """The reference APGD-CE through the wrapper on 4 real test points of robnet_compact (2 classified right, one
    of them robust): it finds adversarial points inside the ball, and the reported accuracy is the one
    re-measured on them."""
    model = robnets.create_model("robnet_compact", pretrained=True)
    x, y = load_sample().batch(0, 4)
    lines = []
    aa = AutoAttack(model, eps=8 / 255, version="custom", attacks=["apgd-ce"], log=lines.append)
    x_adv = aa.run_standard_evaluation(x, y, bs=4)
    assert any("robust accuracy after APGD-CE" in line for line in lines)
    assert aa.clean_accuracy == pytest.approx(_accuracy(model, x, y))
    assert aa.robust_accuracy == pytest.approx(_accuracy(model, x_adv, y))
    assert 0 < aa.robust_accuracy < aa.clean_accuracy  # robust weights: some points survive, some do not
    assert _ball(x_adv - x, "Linf").max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert aa.describe()["engine"].startswith("pyautoattack ")


@pytest.mark.slow
def test_standard_cascade_history_seconds_and_modes(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    model.train()
    aa = AutoAttack(model, eps=EPS, log=None)
    x_adv = aa.run_standard_evaluation(x, y, bs=48)
    assert model.training  # mode restored
    model.eval()
    names = [n for n, _ in aa.robust_accuracy_history]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"] == aa.attacks_to_run
    accuracies = [a for _, a in aa.robust_accuracy_history]
    assert all(b <= a for a, b in zip(accuracies, accuracies[1:])) and accuracies[0] <= aa.clean_accuracy
    assert aa.robust_accuracy == pytest.approx(_accuracy(model, x_adv, y)) == pytest.approx(accuracies[-1])
    assert set(aa.seconds) == set(names) and all(s > 0 for s in aa.seconds.values())
    assert _ball(x_adv - x, "Linf").max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("L2", 0.25), ("L1", 4.0)])
def test_other_norms_stay_inside_their_ball(trained, norm, eps):
    model, x, y = trained
    x, y = x[:24], y[:24]
    aa = AutoAttack(model, norm=norm, eps=eps, version="custom", attacks=["apgd-ce"], log=None)
    x_adv = aa.run_standard_evaluation(x, y, bs=24)
    assert _ball(x_adv - x, norm).max() <= eps * (1 + 1e-4) + 1e-5
    assert aa.robust_accuracy < aa.clean_accuracy


class _Interrupting(nn.Module):
    """The model, raising KeyboardInterrupt at its ``fail_at``-th forward pass (a killed run)."""

    def __init__(self, inner: nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner(x)


@pytest.mark.slow
def test_interrupted_runs_resume_to_the_reference_result(trained, tmp_path):
    """Killed at seeded random forward passes, resumed each time from the state file: the same robust points
    and adversarial examples as the reference's own uninterrupted cascade, and every attack's own seconds."""
    model, x, y = trained
    x, y = x[:40], y[:40]
    settings = dict(eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t", "square"])
    ref = reference_module().AutoAttack(model, eps=EPS, version="custom", attacks=settings["attacks"], seed=0,
                                        device="cpu")
    ref.verbose = False
    for name, attack in (("apgd", ref.apgd), ("apgd_targeted", ref.apgd_targeted)):
        attack.n_iter, attack.n_target_classes = 10, 3
    ref.square.n_queries = 300
    x_ref, _ = ref.run_standard_evaluation(x, y, batch_size=16)

    def shrink(aa):  # the same reduced settings on the wrapper's reference object
        original = aa._reference

        def reference(model_, device):
            inner = original(model_, device)
            inner.apgd.n_iter, inner.apgd_targeted.n_iter, inner.apgd_targeted.n_target_classes = 10, 10, 3
            inner.square.n_queries = 300
            return inner
        aa._reference = reference
        return aa

    counting = _Interrupting(model)
    shrink(AutoAttack(counting, **settings, log=None)).run_standard_evaluation(x, y, bs=16)
    total = counting.calls
    state = tmp_path / "aa_state.safetensors"
    kills = 0
    for trial in range(4):  # seeded trials, each killed at random forward passes until it finishes
        state.unlink(missing_ok=True)
        rng = torch.Generator().manual_seed(trial)
        while True:
            fail_at = int(torch.randint(1, total, (1,), generator=rng))
            run = shrink(AutoAttack(_Interrupting(model, fail_at), **settings, log=None))
            try:
                x_adv = run.run_standard_evaluation(x, y, bs=16, state_path=state)
                break
            except KeyboardInterrupt:
                kills += 1
                assert state.is_file() and not list(tmp_path.glob(".*.tmp"))
        assert torch.equal(x_adv, x_ref), trial
        assert run.robust_accuracy == pytest.approx(_accuracy(model, x_ref, y))
        assert [n for n, _ in run.robust_accuracy_history] == settings["attacks"]
        assert set(run.seconds) == set(settings["attacks"]) and all(s > 0 for s in run.seconds.values())
    assert kills >= 4

    again = shrink(AutoAttack(_Interrupting(model), **settings, log=None))  # finished: replays, runs nothing
    assert torch.equal(again.run_standard_evaluation(x, y, bs=16, state_path=state), x_ref) and again.resumed
    other = copy.deepcopy(model)  # same architecture, other weights
    with torch.no_grad():
        other[-1].bias.add_(1.0)
    for model_, y_, what in ((other, y, "model weights"), (model, (y + 1) % 10, "points")):
        with pytest.raises(RobnetsError, match=f"written for other {what}") as exc:
            AutoAttack(_Interrupting(model_), **settings).run_standard_evaluation(x, y_, bs=16, state_path=state)
        assert "\n" not in str(exc.value)
    with pytest.raises(RobnetsError, match="written for other eps"):
        AutoAttack(_Interrupting(model), **{**settings, "eps": 2 * EPS}).run_standard_evaluation(
            x, y, bs=16, state_path=state)
    state.write_bytes(state.read_bytes()[:200])  # torn by a crash
    with pytest.raises(RobnetsError, match="not a readable AutoAttack state"):
        AutoAttack(_Interrupting(model), **settings).run_standard_evaluation(x, y, bs=16, state_path=state)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_single_reference_attacks_keep_the_invariants(trained, name):
    model, x, y = trained
    x, y = x[:16], y[:16]
    attack = create_attack(name, model, eps=EPS, seed=0)
    if name == "square":
        attack.settings["n_queries"] = 200
    if name in ("apgd-t", "fab-t"):
        attack.settings.update(steps=10, target_classes=2)
    model.train()
    with torch.no_grad():  # attacks still differentiate inside an evaluation loop's no_grad
        x_adv = attack(x, y)
    assert model.training
    model.eval()
    assert _ball(x_adv - x, "Linf").max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert _accuracy(model, x_adv, y) <= _accuracy(model, x, y)
    assert type(attack) in (APGD, APGDT, FAB, Square) and attack.describe()["engine"].startswith("pyautoattack")


def test_bad_arguments_fail_with_one_clear_line(trained):
    model, x, y = trained
    for kwargs, message in ((dict(version="fast"), "version must be"), (dict(norm="Linf2"), "norm must be"),
                            (dict(eps=float("inf")), "finite"), (dict(version="custom"), "needs attacks"),
                            (dict(version="custom", attacks=["pgd"]), "unknown AutoAttack"),
                            (dict(attacks=["apgd-ce"]), "for version='custom'")):
        with pytest.raises(RobnetsError, match=message):
            AutoAttack(model, **kwargs)
    with pytest.raises(RobnetsError, match=r"\[0, 1\]"):
        AutoAttack(model, log=None).run_standard_evaluation(x[:4] * 2, y[:4])


@pytest.mark.slow
def test_a_cascade_stopped_after_an_attack_is_its_first_stages_and_goes_on_later(trained, tmp_path):
    """until='apgd-t' runs the version's first two attacks exactly as the whole version runs them (per-point
    flags equal to a run of just those two), and the same state file later completes the whole cascade with
    the result of an uninterrupted run; a state that went further is refused for an earlier stop."""
    model, x, y = trained
    x, y = x[:32], y[:32]
    attacks = ["apgd-ce", "apgd-t", "square"]

    def shrunk(**kw):
        aa = AutoAttack(model, eps=EPS, log=None, **kw)
        original = aa._reference

        def reference(model_, device):
            inner = original(model_, device)
            inner.apgd.n_iter, inner.apgd_targeted.n_iter, inner.apgd_targeted.n_target_classes = 10, 10, 3
            inner.square.n_queries = 200
            return inner
        aa._reference = reference
        return aa

    full = shrunk(version="custom", attacks=attacks)
    x_full = full.run_standard_evaluation(x, y, bs=16)
    first_two = shrunk(version="custom", attacks=attacks[:2])
    first_two.run_standard_evaluation(x, y, bs=16)
    state = tmp_path / "state.safetensors"
    stopped = shrunk(version="custom", attacks=attacks)
    stopped.run_standard_evaluation(x, y, bs=16, state_path=state, until="apgd-t")
    assert [n for n, _ in stopped.robust_accuracy_history] == ["apgd-ce", "apgd-t"]
    assert torch.equal(stopped.robust_flags, first_two.robust_flags)
    assert torch.equal(stopped.clean_flags, full.clean_flags)
    assert stopped.robust_accuracy == pytest.approx(stopped.robust_flags.float().mean().item())
    later = shrunk(version="custom", attacks=attacks)
    assert torch.equal(later.run_standard_evaluation(x, y, bs=16, state_path=state), x_full) and later.resumed
    assert torch.equal(later.robust_flags, full.robust_flags)
    with pytest.raises(RobnetsError, match="has gone past apgd-t"):
        shrunk(version="custom", attacks=attacks).run_standard_evaluation(x, y, bs=16, state_path=state,
                                                                         until="apgd-t")
    with pytest.raises(RobnetsError, match="not an attack of this AutoAttack"):
        shrunk(version="custom", attacks=attacks).run_standard_evaluation(x, y, bs=16, until="fab-t")


@pytest.mark.slow
def test_progress_is_reported_per_chunk_and_verbose_prints_like_the_reference(trained, capsys):
    model, x, y = trained
    x, y = x[:24], y[:24]
    seen = []
    aa = AutoAttack(model, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"], log=None, verbose=True,
                    progress=lambda *args: seen.append(args))
    original = aa._reference

    def reference(model_, device):
        inner = original(model_, device)
        inner.apgd.n_iter, inner.apgd_targeted.n_iter, inner.apgd_targeted.n_target_classes = 5, 5, 2
        return inner
    aa._reference = reference
    aa.run_standard_evaluation(x, y, bs=8)
    for attack in ("apgd-ce", "apgd-t"):
        rows = [s for s in seen if s[0] == attack]
        assert rows[0][1] == 0 and rows[-1][1] == rows[-1][2]  # from none to all of the points it attacks
        assert [r[1] for r in rows] == sorted(r[1] for r in rows) and all(r[4] == 24 for r in rows)
        assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)  # robust never rises
    err = capsys.readouterr().err
    assert "[autoattack] robust accuracy after APGD-CE" in err and "[autoattack] clean accuracy" in err
