"""Hand-designed CIFAR baselines (RobNets Table 1): exact parameter counts of the reference implementations,
forward/backward, the classifier head, input normalization inside the model, safetensors round trips."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

import robnets
from robnets.errors import RobnetsError
from robnets.models import InputNormalization
from robnets.models.baselines import CIFAR10_MEAN, CIFAR10_STD
from robnets.models.loading import load_model
from robnets.models.checkpoint import save_weights

# Parameter counts for 10 classes of the reference implementations (kuangliu/pytorch-cifar for ResNet,
# PreActResNet and DenseNet; Zagoruyko & Komodakis / xternalz for WideResNet-28-10).
BASELINES = {
    "preact_resnet18": 11_172_170,
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
    "wide_resnet28_10": 36_479_194,
    "densenet121": 6_956_298,
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return robnets.create_model(name, **kwargs)


def test_all_baselines_registered():
    names = robnets.list_models()
    for name in BASELINES:
        assert name in names
        assert robnets.model_info(name).input_size == (3, 32, 32)


@pytest.mark.parametrize("name", BASELINES)
def test_parameter_count_and_config(name):
    model = _meta_model(name)
    assert _count(model) == BASELINES[name]
    assert model.num_classes == 10
    assert isinstance(model.normalize, InputNormalization)
    # config holds exactly the builder's keyword arguments, so checkpoints can rebuild the model
    builder = robnets.model_info(name).builder
    assert set(model.config) == set(inspect.signature(builder).parameters)
    assert model.config == robnets.model_info(name).default_args
    assert model.config["mean"] == list(CIFAR10_MEAN) and model.config["std"] == list(CIFAR10_STD)


@pytest.mark.parametrize("name", BASELINES)
def test_num_classes_changes_head(name):
    base = _meta_model(name)
    model = _meta_model(name, num_classes=100)
    assert model.num_classes == 100 and model.config["num_classes"] == 100
    assert model.linear.out_features == 100
    in_features = model.linear.in_features
    assert _count(model) - _count(base) == 90 * (in_features + 1)


@pytest.mark.parametrize("name", BASELINES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = robnets.create_model(name).train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", BASELINES)
def test_normalization_inside_equals_normalized_input(name):
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    with_norm = robnets.create_model(name, mean=mean, std=std)
    plain = robnets.create_model(name, mean=None, std=None)
    assert isinstance(plain.normalize, torch.nn.Identity)
    assert plain.config["mean"] is None and plain.config["std"] is None
    # normalization buffers are not persistent: both models have the same state-dict keys
    plain.load_state_dict(with_norm.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32)
    normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(with_norm(x), plain(normalized), rtol=1e-4, atol=1e-4)


def test_mean_without_std_is_rejected():
    with pytest.raises(RobnetsError, match="mean and std"):
        robnets.create_model("resnet18", mean=[0.5, 0.5, 0.5], std=None)


@pytest.mark.parametrize("name, kwargs", [
    ("preact_resnet18", {}),
    ("preact_resnet18", {"mean": None, "std": None, "num_classes": 100}),
    ("densenet121", {}),
    ("resnet50", {"num_classes": 100}),
])
def test_safetensors_round_trip(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = robnets.create_model(name, **kwargs)
    # non-trivial BN statistics, so that a round trip that lost buffers would show in the logits
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = save_weights(model, tmp_path / f"{name}.safetensors", dataset="cifar10")
    rebuilt = load_model(path)
    assert type(rebuilt) is type(model)
    assert rebuilt.registry_name == name
    assert rebuilt.config == model.config
    assert not rebuilt.training
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_wide_resnet_dropout_is_rebuilt_from_metadata():
    from robnets.models.loading import model_from_metadata
    from robnets.models.checkpoint import model_spec

    with torch.device("meta"):
        model = robnets.create_model("wide_resnet28_10", dropout=0.3, num_classes=100)
        rebuilt = model_from_metadata(model_spec(model), "test")
    assert model.config["dropout"] == 0.3
    assert rebuilt.config == model.config and rebuilt.num_classes == 100
    assert all(block.dropout == 0.3 for block in rebuilt.layers)
