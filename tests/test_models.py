"""RobNet networks: exact parameter counts and state-dict layout of the original, zero-edge skipping that
keeps outputs identical, every constructor option, the registry."""

from __future__ import annotations

import json

import pytest
import torch

import robnets
from robnets.errors import RobnetsError
from robnets.models import ROBNET_FREE, Genotype, RobNet

REFERENCE_MODELS = {
    "robnet_free_cifar10": ("robnet_free", 5_439_790),
    "robnet_large_v1_cifar10": ("robnet_large_v1", 6_842_710),
    "robnet_large_v2_cifar10": ("robnet_large_v2", 33_326_666),
    "robnet_large_v1_imagenet": ("robnet_large_v1", 12_756_448),
}


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", sorted(REFERENCE_MODELS))
def test_state_dict_keys_and_shapes_equal_the_original(reference_dir, key):
    reference = json.loads((reference_dir / "original_state_dicts.json").read_text())[key]
    name, expected_params = REFERENCE_MODELS[key]
    with torch.device("meta"):
        model = robnets.create_model(name, **reference["model_param"])
    assert _num_params(model) == reference["num_parameters"] == expected_params
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    theirs = {k: (shape, dtype) for k, shape, dtype in reference["state_dict"]}
    assert ours == theirs


def test_default_arguments_give_the_published_sizes():
    with torch.device("meta"):
        assert _num_params(robnets.create_model("robnet_free")) == 5_439_790
        assert _num_params(robnets.create_model("robnet_large_v1")) == 6_842_710
        assert _num_params(robnets.create_model("robnet_large_v2")) == 33_326_666
        imagenet = robnets.create_model("robnet_large_v1", C=48, num_classes=1000, ImgNetBB=True)
        assert _num_params(imagenet) == 12_756_448


def test_reductions_at_one_and_two_thirds():
    model = robnets.create_model("robnet_large_v1", C=4, layers=9)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [3, 6]
    model = robnets.create_model("robnet_free", C=4)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]


def _inputs(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _randomize_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("training", [False, True])
def test_skipping_zero_edges_keeps_outputs_and_gradients_identical(training):
    torch.manual_seed(0)
    model = robnets.create_model("robnet_free", C=8)  # robnet_free has 36 absent edges
    _randomize_batchnorm(model)
    model.train(training)
    x = _inputs().requires_grad_(True)
    fast = model(x)
    (grad_fast,) = torch.autograd.grad(fast.sum(), x)
    model.set_reference_mode(True)
    reference = model(x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.equal(fast, reference)
    assert torch.allclose(grad_fast, grad_reference, rtol=0, atol=1e-6)


def test_zero_edges_cost_no_compute():
    from robnets.models.flops import flops_per_image
    from robnets.models.ops import Zero

    model = robnets.create_model("robnet_free", C=4)
    zero_modules = [m for m in model.modules() if isinstance(m, Zero)]
    assert len(zero_modules) == sum(c.edges.count(robnets.models.EdgeOp.NONE) for c in ROBNET_FREE.cells) == 36
    calls = []
    for m in zero_modules:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(_inputs(1))
        assert calls == []  # absent edges are never executed
        model.set_reference_mode(True)(_inputs(1))
        assert len(calls) == 36  # the original's behaviour: each one multiplied by zero

    dense = robnets.create_model("robnet", genotype=[["01"] * 14], C=8, layers=3)
    sparse = robnets.create_model("robnet", genotype=[["01"] * 2 + ["00"] * 12], C=8, layers=3)
    assert flops_per_image(sparse) < 0.4 * flops_per_image(dense)


def test_node_with_only_absent_inputs_is_zero_and_matches_reference():
    torch.manual_seed(0)
    codes = ["11", "10"] + ["00"] * 3 + ["01", "00", "00", "00"] + ["11"] * 5
    model = robnets.create_model("robnet", genotype=[codes], C=8, layers=3)  # node 3 gets nothing
    _randomize_batchnorm(model)
    x = _inputs()
    with torch.no_grad():
        fast = model(x)
        reference = model.set_reference_mode(True)(x)
    assert torch.equal(fast, reference)


def test_flops_of_robnet_free_match_the_original_measurement():
    from robnets.models.flops import flops_per_image

    assert round(flops_per_image(robnets.create_model("robnet_free")) / 1e9, 2) == 1.56


@pytest.mark.parametrize(
    "kwargs, input_size",
    [
        (dict(C=4, layers=3, adaptive_pool_size=2), 32),
        (dict(C=4, layers=3, stem_multiplier=2, multiplier=3), 32),
        (dict(C=4, layers=3, steps=4, num_classes=7), 32),
        (dict(C=4, layers=3, imagenet_stem=True, num_classes=1000), 224),
    ],
)
def test_every_original_option_builds_and_runs(kwargs, input_size):
    model = robnets.create_model("robnet_large_v1", **kwargs)
    out = model(_inputs(2, input_size))
    assert out.shape == (2, kwargs.get("num_classes", 10))
    assert torch.isfinite(out).all()


def test_three_node_cells():
    model = robnets.create_model("robnet", genotype=[["11"] * 9], C=4, layers=3, steps=3, multiplier=3)
    assert model(_inputs(2)).shape == (2, 10)


def test_normalization_lives_inside_the_model_and_is_not_saved():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    plain = robnets.create_model("robnet_large_v1", C=4, layers=3)
    normalized = robnets.create_model("robnet_large_v1", C=4, layers=3, mean=mean, std=std)
    assert set(plain.state_dict()) == set(normalized.state_dict())
    normalized.load_state_dict(plain.state_dict())
    x = _inputs(2)
    x_norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(normalized(x), plain(x_norm), atol=1e-6)


def test_registry_lists_and_describes_models():
    names = robnets.list_models()
    assert {"robnet_free", "robnet_large_v1", "robnet_large_v2", "robnet"} <= set(names)
    assert robnets.list_models("robnet_large*") == ["robnet_large_v1", "robnet_large_v2"]
    info = robnets.model_info("robnet_free")
    assert info.genotype == ROBNET_FREE and info.default_args["C"] == 36
    model = robnets.create_model("robnet_free", C=4)
    assert isinstance(model, RobNet) and not model.training and model.genotype == ROBNET_FREE


def test_registry_errors_are_clear():
    with pytest.raises(RobnetsError, match="unknown model 'robnet_fre'.*did you mean 'robnet_free'"):
        robnets.create_model("robnet_fre")
    with pytest.raises(RobnetsError, match="has no argument 'channels'"):
        robnets.create_model("robnet_free", channels=4)
    with pytest.raises(RobnetsError, match="C must be even with the ImageNet stem"):
        robnets.create_model("robnet_large_v1", C=5, imagenet_stem=True)
    with pytest.raises(RobnetsError, match="given twice"):
        robnets.create_model("robnet_free", AdPoolSize=1, adaptive_pool_size=1)
    with pytest.raises(RobnetsError, match="3 channels"):
        robnets.create_model("robnet_large_v1", C=4, layers=3)(torch.rand(1, 1, 32, 32))


def test_any_genotype_string_builds_a_network():
    text = "0111-011111-10101110-1101111000"
    model = robnets.create_model("robnet", genotype=text, C=4, layers=4)
    assert str(model.genotype) == text and len(model.cells) == 4
    free = Genotype.parse("_".join([text] * 5))
    model = robnets.create_model("robnet", genotype=free, C=4)
    assert len(model.cells) == 5 and not model.config["share"]
