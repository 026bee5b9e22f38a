"""The fast path computes the same function as the plain (original) execution: logits and input gradients
agree on the reference fixtures and random inputs, exactly up to rounding (checked in float64)."""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
import torch.nn.functional as F

import robnets
from benchmarks.measure.numerics import compare_with_float64, logits_and_input_grad
from robnets.acceleration import FastRobNet, GraphedPGDLoop, accelerate
from robnets.acceleration.folding import randomize_batchnorm
from robnets.attacks import PGD
from robnets.models.loading import load_model

FIXTURES = {
    "robnet_free_C8": "robnet_free",
    "robnet_large_v1_C8_L8_ddp_trainstate": "robnet_large_v1",
    "robnet_large_v1_imagenet_C8_L5": "robnet_large_v1",
}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]


@contextlib.contextmanager
def _exact_fp32():
    """TF32 off: exact fp32 convolutions and matmuls on CUDA too (no effect on CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _assert_same_numbers(model, x, y):
    """The fast fp32 path computes the plain path's logits and input gradients up to rounding:

    * in float64 the two paths agree to 1e-10 (logits) and 1e-8 (gradients): the transformation is exact;
    * each fp32 path equals its float64 twin within 1e-4 (logits, and the input gradient at the activation
      pattern the fp32 run took); rounding flips only a handful of ReLUs whose input is within rounding of zero;
    * fast and plain fp32 logits agree within 1e-4, and so do their input gradients wherever neither path
      flipped a ReLU (a flipped kink changes a gradient discontinuously in either path: benchmarks/measure/numerics.py).
    """
    model64 = copy.deepcopy(model).double()
    plain = compare_with_float64(model.set_reference_mode(True), model64.set_reference_mode(True), x, y)
    model.set_reference_mode(False)
    fast = compare_with_float64(FastRobNet(model), FastRobNet(model64), x, y)
    assert _rel(fast.logits64, plain.logits64) <= 1e-10 and _rel(fast.grad64, plain.grad64) <= 1e-8
    for path, result in (("plain", plain), ("fast", fast)):
        summary = f"{path}: {result}"
        assert result.logits_rel <= 1e-4 and result.grad_rel_same_pattern <= 1e-4, summary
        assert result.flipped_units <= 1e-5 * result.relu_units and result.max_flip_margin <= 1e-4, summary
    assert (fast.logits - plain.logits).abs().max() <= 1e-4 * plain.logits.abs().max()
    if plain.flipped_units == fast.flipped_units == 0:
        assert _rel(fast.grad, plain.grad) <= 1e-4, (plain, fast)
    return plain, fast


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stem", sorted(FIXTURES))
def test_fast_path_matches_plain_on_the_reference_fixtures(reference_dir, stem, device):
    folder = reference_dir / "original_checkpoints"
    expected = torch.load(folder / f"{stem}.expected.pt", weights_only=True)
    model = load_model(folder / f"{stem}.pth.tar", FIXTURES[stem], **expected["model_param"]).to(device)
    x = expected["inputs"].to(device)
    y = torch.arange(x.shape[0], device=device) % model.num_classes
    with _exact_fp32():
        _assert_same_numbers(model, x, y)


@pytest.mark.slow
def test_a_flipped_relu_kink_explains_the_whole_gradient_difference():
    """Why gradients are compared at the fp32 run's activation pattern: on this random network the plain fp32
    path flips three of 42 million ReLUs (inputs within 1e-7 of zero, relative to their tensor), which moves
    its input gradient 1.7e-3 away from float64; at the same pattern it agrees to better than 1e-6 (the fast
    path happens to flip none on these inputs). Which path flips where is rounding luck, which is why the check
    above does not require equal gradients across flips."""
    torch.manual_seed(0)
    model = robnets.create_model("robnet_free", C=8).set_reference_mode(True)
    randomize_batchnorm(model)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    plain = compare_with_float64(model, copy.deepcopy(model).double(), x, y)
    assert plain.flipped_units >= 1 and plain.grad_rel > 1e-4 and plain.grad_rel_same_pattern < 1e-6
    assert plain.max_flip_margin < 1e-5


@pytest.mark.parametrize("channels_last, C", [(True, 8), (False, 8), (False, 7)])
def test_fast_path_is_exact_up_to_rounding(channels_last, C):
    """In float64 every difference is rounding: the transformation itself is exact (also at an odd width)."""
    torch.manual_seed(0)
    model = robnets.create_model("robnet_free", C=C).double()  # all four edge kinds, 36 absent edges
    randomize_batchnorm(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 32, 32, generator=g).double(), torch.randint(0, 10, (4,), generator=g)
    plain_logits, plain_grad = logits_and_input_grad(model.set_reference_mode(True), x, y)
    fast_logits, fast_grad = logits_and_input_grad(FastRobNet(model, channels_last=channels_last), x, y)
    assert _rel(fast_logits, plain_logits) <= 1e-12
    assert _rel(fast_grad, plain_grad) <= 1e-10


@pytest.mark.slow
def test_fast_path_on_random_inputs_in_fp32():
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=8, layers=6)
    randomize_batchnorm(model)
    _assert_same_numbers(model, torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))


def test_fast_path_follows_weight_and_statistics_changes():
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    fast = FastRobNet(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fast(x)  # fills the folded-parameter cache
        model.cells[1]._ops[0].op.conv.op[2].weight.mul_(1.5)
        model.cells[2].preprocess1.op[2].running_var.add_(0.3)
        assert torch.allclose(fast(x), model(x), atol=1e-5, rtol=1e-4)


def test_attack_on_the_fast_path_gives_the_plain_result():
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=8, layers=3)
    randomize_batchnorm(model)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plain = PGD(model.set_reference_mode(True), steps=3, seed=0)(x, y)
    fast = PGD(FastRobNet(model), steps=3, seed=0)(x, y)
    # identical up to a few coordinates whose gradient sign flips under rounding at a ReLU kink
    assert (plain != fast).float().mean() <= 1e-3
    assert (fast - x).abs().max() <= 8 / 255 + 1e-6


def test_accelerate_chooses_the_path_that_applies():
    robnet = robnets.create_model("robnet_large_v1", C=4, layers=3)
    engine, description = accelerate(robnet, "cpu")
    assert isinstance(engine, FastRobNet) and description.startswith("fast")
    baseline = robnets.create_model("preact_resnet18")
    engine, description = accelerate(baseline, "cpu")
    assert engine is baseline and description.startswith("plain")


@pytest.mark.slow
def test_evaluation_uses_the_fast_path_by_default_with_the_same_accuracy(tmp_path):
    from robnets.config import load_config
    from robnets.evaluation.pipeline import run_evaluation

    results = {}
    for execution in ("fast", "plain"):
        config = load_config(None, ["model.name=robnet_large_v1", "model.C=8", "model.layers=6",
                                    "data.dataset=cifar10-sample", "eval.attacks=clean,pgd3", "eval.n=32",
                                    "eval.device=cpu", f"eval.execution={execution}"])
        run = run_evaluation(config, untrained=True, output_dir=tmp_path / execution, progress=False,
                             log=lambda m: None)
        assert run.meta["execution"].startswith(execution)
        results[execution] = [r.correct for r in run.results]
    clean_fast, pgd_fast = results["fast"]
    clean_plain, pgd_plain = results["plain"]
    assert clean_fast == clean_plain and abs(pgd_fast - pgd_plain) <= 1


def test_eval_compile_asks_for_the_compiled_fast_path(tmp_path, monkeypatch):
    """eval.compile=true (a config field, saved with the run) compiles the fast path; compiling itself is
    covered by the engine tests (the 'eager' backend here, Inductor on CUDA), so the run stops right there."""
    from robnets.config import load_config
    from robnets.evaluation import pipeline

    asked = []

    class Stop(BaseException):
        """Ends the run right after the engine is chosen (before any attack)."""

    def recording_accelerate(model, device=None, **kwargs):
        asked.append(kwargs.get("compile"))
        raise Stop

    monkeypatch.setattr(pipeline, "accelerate", recording_accelerate)
    for flag, expected in (("true", True), ("false", None)):  # None: ROBNETS_COMPILE decides
        config = load_config(None, ["model.name=robnet_large_v1", "model.C=4", "model.layers=3",
                                    "data.dataset=cifar10-sample", "eval.device=cpu", f"eval.compile={flag}"])
        with pytest.raises(Stop):
            pipeline.run_evaluation(config, untrained=True, output_dir=tmp_path / flag, progress=False,
                                    log=lambda m: None)
        assert asked[-1] is expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_pgd_equals_eager_pgd():
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=8, layers=6).cuda()
    fast = FastRobNet(model)
    x, y = torch.rand(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    eager = PGD(fast, steps=5, seed=0)(x, y)
    graphed = PGD(fast, steps=5, seed=0, step_loop=GraphedPGDLoop())(x, y)
    assert (eager != graphed).float().mean() <= 1e-3
    assert (graphed - x).abs().max() <= 8 / 255 + 1e-6


def test_cuda_graphs_switch_from_the_environment(monkeypatch):
    from robnets.acceleration import cuda_graphs_enabled, pgd_loop_for

    assert cuda_graphs_enabled("cuda") and not cuda_graphs_enabled("cpu")
    assert isinstance(pgd_loop_for("cuda"), GraphedPGDLoop) and pgd_loop_for("cpu") is None
    monkeypatch.setenv("ROBNETS_CUDA_GRAPHS", "0")
    assert not cuda_graphs_enabled("cuda") and pgd_loop_for("cuda") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_matches_plain():
    """Full-size RobNets with random BatchNorm statistics on CUDA, TF32 off: the same numbers as the plain
    path up to rounding (see _assert_same_numbers)."""
    for name, kwargs in [("robnet_free", {}), ("robnet_large_v1", {"C": 16, "layers": 8})]:
        torch.manual_seed(0)
        model = robnets.create_model(name, **kwargs)
        randomize_batchnorm(model)
        model = model.cuda().eval()
        x = torch.rand(16, 3, 32, 32, device="cuda")
        y = torch.randint(0, 10, (16,), device="cuda")
        with _exact_fp32():
            _assert_same_numbers(model, x, y)


def _perturb_weights(model, seed=3):
    """An optimizer step and new BatchNorm statistics, in place (as training does between attacks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.device) * 0.01)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.05)
                m.running_var.mul_(1.1)


def test_engine_finds_every_folded_conv(monkeypatch):
    from robnets.acceleration import fast_robnet, folding

    made = []
    original = folding.FoldedConv.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(folding.FoldedConv, "__init__", recording_init)
    for name, kwargs in [("robnet_free", {"C": 4}), ("robnet_large_v1", {"C": 4, "layers": 5, "imagenet_stem": True})]:
        made.clear()
        engine = fast_robnet.FastRobNet(robnets.create_model(name, **kwargs))
        assert {id(f) for f in engine._folded} == {id(f) for f in made} and len(engine._folded) == len(made) > 20


def test_folded_parameters_follow_weight_changes_in_place():
    """Training changes the weights between attacks: the engine follows them, and the folded tensors keep
    their identity (captured CUDA graphs and compiled graphs read them by address)."""
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3).eval()
    randomize_batchnorm(model)
    engine = FastRobNet(model)
    x = torch.rand(2, 3, 32, 32)
    engine(x)
    before = [(id(f._weight), f._weight.clone()) for f in engine._folded]
    _perturb_weights(model)
    engine.refresh()
    after = [(id(f._weight), f._weight) for f in engine._folded]
    assert [i for i, _ in before] == [i for i, _ in after]
    assert all(not torch.equal(old, new) for (_, old), (_, new) in zip(before, after))
    with torch.no_grad():
        assert torch.allclose(engine(x), model.set_reference_mode(True)(x), rtol=1e-4, atol=1e-5)


def test_bf16_engine_keeps_its_weights_converted_and_follows_weight_changes():
    """bf16 autocast: the engine used to cast every folded weight on every call (robnet_free: 1,212 casts per
    attack step beside 1,562 convolutions, each one small kernel); the converted copies are now kept and
    re-derived in place when training changes the weights, with the numbers of a freshly built engine."""
    from benchmarks.measure.traffic import attack_step_traffic

    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3).eval()
    randomize_batchnorm(model)
    engine = FastRobNet(model)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attack_step_traffic(engine, x, y)  # the first step derives the bf16 copies
        step = attack_step_traffic(engine, x, y)
        bf16 = torch.bfloat16
        converted = [f for f in engine._folded if bf16 in f._derived]  # all but the stem (its input is fp32)
        copies = [f._derived[bf16] for f in converted]
        _perturb_weights(model)
        logits, grad = logits_and_input_grad(engine, x, y)
        fresh_logits, fresh_grad = logits_and_input_grad(FastRobNet(model), x, y)
    convolutions = step.calls["convolution"]
    assert convolutions > 100 and step.calls.get("_to_copy", 0) <= 8, step.calls  # input, classifier, loss
    assert len(converted) == len(engine._folded) - 1 and all(w.dtype == torch.bfloat16 for w, _ in copies)
    after = [f._derived[bf16] for f in converted]
    assert all(old[0] is new[0] and old[1] is new[1] for old, new in zip(copies, after))  # refreshed in place
    assert torch.equal(logits, fresh_logits) and torch.equal(grad, fresh_grad)


def test_folded_copies_in_other_dtypes_follow_their_sources():
    from robnets.acceleration.folding import FoldedConv, fold_parameters

    torch.manual_seed(0)
    depthwise = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    pointwise, norm = torch.nn.Conv2d(6, 5, 1, bias=False), torch.nn.BatchNorm2d(5).eval()
    randomize_batchnorm(norm)
    dw, pw = FoldedConv(depthwise, None), FoldedConv(pointwise, norm)
    dw.refresh_in_place = pw.refresh_in_place = True
    dw_bf16 = dw.parameters(torch.bfloat16)[0]
    pw_weight, pw_bias = pw.parameters(torch.bfloat16)
    assert dw.parameters()[0].data_ptr() == depthwise.weight.data_ptr()  # the source dtype: the parameter itself
    for _ in range(2):
        with torch.no_grad():
            depthwise.weight.mul_(1.5)
            pointwise.weight.add_(0.1)
            norm.running_var.add_(0.2)
        assert dw.parameters(torch.bfloat16)[0] is dw_bf16  # refreshed in place
        assert torch.equal(dw_bf16, depthwise.weight.detach().to(torch.bfloat16))
        weight, bias = fold_parameters(pointwise, norm)
        assert pw.parameters(torch.bfloat16) == (pw_weight, pw_bias)
        assert torch.equal(pw_weight, weight.detach().to(torch.bfloat16))
        assert torch.equal(pw_bias, bias.detach().to(torch.bfloat16))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_engine_equals_eager_and_never_recompiles_for_new_weights(precision):
    """compile=...: one graph, no breaks (fullgraph), same logits and input gradients as the eager engine,
    and weight changes (training) reuse the graph instead of recompiling. A counting backend stands in for
    Inductor, whose compilation of even a tiny RobNet takes ~50 s on 2 cores (test below, opt-in on CPU).
    bf16: the graph reads the engine's converted weights (no casts in it), refreshed in place."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3).eval()
    randomize_batchnorm(model)
    compiled, eager = FastRobNet(model, compile=counting_backend), FastRobNet(model)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for _ in range(2):
            c_logits, c_grad = logits_and_input_grad(compiled, x, y)
            e_logits, e_grad = logits_and_input_grad(eager, x, y)
            assert torch.equal(c_logits, e_logits) and torch.equal(c_grad, e_grad)
            _perturb_weights(model)
    assert len(graphs) == 1
    calls = [str(node.target) for node in graphs[0].graph.nodes if node.op in ("call_method", "call_function")]
    assert sum("conv2d" in c for c in calls) > 100 and "to" not in calls, sorted(set(calls))


def test_compile_switch_from_the_environment(monkeypatch):
    from robnets.acceleration import compile_from_environment

    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    monkeypatch.setenv("ROBNETS_COMPILE", "1")
    assert compile_from_environment()
    engine, description = accelerate(model, "cpu")
    assert engine.compiled and "torch.compile" in description
    assert accelerate(model, "cpu")[0] is engine  # one compiled engine per model: no recompilation
    monkeypatch.setenv("ROBNETS_COMPILE", "yes please")
    with pytest.raises(robnets.RobnetsError, match="ROBNETS_COMPILE must be 0 or 1"):
        accelerate(model, "cpu")
    monkeypatch.setenv("ROBNETS_COMPILE", "0")
    assert not accelerate(model, "cpu")[0].compiled


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("ROBNETS_TEST_INDUCTOR") != "1",
                    reason="Inductor compilation takes ~50 s on 2 CPU cores: runs on CUDA, or set ROBNETS_TEST_INDUCTOR=1")
def test_inductor_compiled_engine_matches_eager():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=8, layers=3).to(device).eval()
    x, y = torch.rand(4, 3, 32, 32, device=device), torch.tensor([1, 7, 3, 0], device=device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        c_logits, c_grad = logits_and_input_grad(FastRobNet(model, compile=True), x, y)
        e_logits, e_grad = logits_and_input_grad(FastRobNet(model), x, y)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert _rel(c_logits, e_logits) <= 1e-5 and _rel(c_grad, e_grad) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("ROBNETS_TEST_INDUCTOR") != "1",
                    reason="Inductor compiles for minutes on 2 CPU cores: runs on CUDA, or set ROBNETS_TEST_INDUCTOR=1")
def test_inductor_compiled_training_step_matches_eager():
    """compile_for_training: one train-mode step (batch statistics, running-statistics update, weight
    gradients) gives the eager loss, gradients and running statistics. (Over several PGD training steps the
    two drift apart chaotically: the sign of near-zero input gradients flips with rounding.)"""
    from robnets.acceleration import compile_for_training

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    eager = robnets.create_model("robnet_large_v1", C=8, layers=3).to(device).train()
    compiled_source = copy.deepcopy(eager)
    compiled = compile_for_training(compiled_source)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device)
    stats = [m.running_mean for m in compiled_source.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    versions = [t._version for t in stats]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        losses = []
        for net in (eager, compiled):
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            losses.append(loss.item())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # weight gradients pass through train-mode BatchNorm backwards (batch-wide sums with cancellation) that
    # Inductor reorders: on CPU the worst, the stem's BN weight, differs by 1.1e-4 of its largest entry
    worst = max(_rel(q.grad, p.grad) for p, q in zip(eager.parameters(), compiled_source.parameters()))
    assert worst <= 1e-3, worst
    for (name, b), c in zip(eager.named_buffers(), compiled_source.buffers()):
        assert torch.allclose(c.float(), b.float(), rtol=1e-5, atol=1e-6), name  # running stats updated alike
    # the compiled update bumps their version counters, so the fast attack engine re-folds its BatchNorms
    assert all(t._version > v for t, v in zip(stats, versions))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_attack_follows_weight_changes():
    """A captured PGD graph reused after an optimizer step attacks the new weights (the engine refreshes its
    folded parameters in place before each replay), exactly as an eager attack does."""
    torch.manual_seed(0)
    model = robnets.create_model("robnet_large_v1", C=8, layers=3).cuda().eval()
    engine = FastRobNet(model)
    x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    graphed = PGD(engine, steps=3, seed=0, step_loop=GraphedPGDLoop())
    before = graphed(x, y)
    _perturb_weights(model)
    graphed.set_seed(0)  # the same random start as the fresh eager attack below (seeded streams advance per call)
    after = graphed(x, y)
    assert (after != PGD(engine, steps=3, seed=0)(x, y)).float().mean() <= 1e-3
    assert (after != before).float().mean() >= 0.05  # the new weights changed the attack: a stale replay fails
