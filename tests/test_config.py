"""Configuration: the original RobNets config.py files (parsed, never executed), their YAML twins, value
checking, dotted overrides and saving the resolved config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from robnets.config import Config, load_config, parse_original_config, save_config
from robnets.config.original import evaluate_expression
from robnets.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
NAMES = ["RobNet_free_cifar10", "RobNet_large_cifar10", "RobNet_large_v2_cifar10", "RobNet_free_SVHN",
         "RobNet_large_SVHN", "RobNet_large_imgnet"]


@pytest.fixture
def original_configs(reference_dir) -> dict:
    return json.loads((reference_dir / "original_configs.json").read_text())["configs"]


def _approx(value):  # noqa: ANN001, ANN202
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-12)
    return value


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ the six original configs
def test_all_experiments_are_covered(original_configs):
    assert sorted(original_configs) == sorted(NAMES)
    assert sorted(p.name for p in EXPERIMENTS.iterdir() if (p / "config.py").is_file()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_original_config_matches_reference(name, original_configs):
    raw = parse_original_config((EXPERIMENTS / name / "config.py").read_text(), name)
    expected = original_configs[name]
    assert raw == _approx(expected)
    assert type(raw["attack_param"]["epsilon"]) is float  # 8 / 255. evaluated, not kept as text

    config = load_config(EXPERIMENTS / name / "config.py")
    model, data = expected["model_param"], expected["dataset_param"]
    assert config.name == name
    assert config.model.name == expected["model"]
    assert (config.model.C, config.model.num_classes, config.model.layers) == (model["C"], model["num_classes"],
                                                                              model["layers"])
    assert (config.model.steps, config.model.multiplier, config.model.stem_multiplier) == (4, 4, 3)
    assert config.model.share is model["share"]
    assert config.model.adaptive_pool_size == model.get("AdPoolSize")
    assert config.model.imagenet_stem == model.get("ImgNetBB")
    assert config.data.dataset == {"cifar10": "cifar10", "SVHN": "svhn", "ImgNet": "imagenet"}[expected["dataset"]]
    assert config.data.root == data["data_root"]
    assert config.data.batch_size == data["batch_size"] and config.data.num_workers == data["num_workers"]
    assert config.data.cutout is data.get("cutout", False)
    assert config.attack.enabled is True and config.attack.random_start is True
    assert config.attack.eps == 8 / 255 and config.attack.step_size == 2 / 255
    assert config.attack.steps == expected["attack_param"]["num_steps"]
    assert config.seed == 10 and config.report_freq == 10 and config.output_dir == "./log"
    if "train_param" in expected:
        train = expected["train_param"]
        assert config.train.lr == train["learning_rate"] and config.train.lr_min == train["learning_rate_min"]
        assert config.train.weight_decay == train["weight_decay"] and config.train.epochs == train["epochs"]
        assert config.train.no_wd is True
        assert config.train.warmup_lr == train["warm_up_param"]["warm_up_base_lr"] == 0.02
        assert config.train.warmup_epochs == train["warm_up_param"]["warm_up_epochs"] == 20
    else:
        assert config.train == type(config.train)()  # defaults where the original has no train_param
    if "resume_path" in expected:
        assert config.checkpoint.path == expected["resume_path"]["path"]
        assert config.checkpoint.original_format is expected["resume_path"]["origin_ckpt"]
    else:
        assert config.checkpoint.path is None


def test_spot_values_of_original_configs(original_configs):
    imgnet = load_config(EXPERIMENTS / "RobNet_large_imgnet" / "config.py")
    assert imgnet.model.imagenet_stem is True and imgnet.model.num_classes == 1000 and imgnet.model.C == 48
    assert (imgnet.data.resize_size, imgnet.data.input_size, imgnet.data.dataset) == (256, 224, "imagenet")
    assert imgnet.checkpoint.path == "./checkpoint/RobNet_large_v1_imgnet.pth.tar"
    svhn = load_config(EXPERIMENTS / "RobNet_free_SVHN" / "config.py")
    assert svhn.attack.steps == 100 and svhn.data.dataset == "svhn" and svhn.model.share is False
    v2 = load_config(EXPERIMENTS / "RobNet_large_v2_cifar10" / "config.py")
    assert (v2.model.C, v2.model.layers, v2.train.lr) == (64, 33, 0.6)


@pytest.mark.parametrize("name", NAMES)
def test_yaml_twin_equals_original(name):
    from_py = load_config(EXPERIMENTS / name / "config.py")
    from_yaml = load_config(EXPERIMENTS / name / "config.yaml")
    assert isinstance(from_yaml, Config)
    assert from_py.output_dir == "./log" and from_yaml.output_dir == "./runs"  # this project's one output root
    assert dataclasses.replace(from_yaml, output_dir=from_py.output_dir) == from_py


# ------------------------------------------------------------------------------------ parsing is safe
@pytest.mark.parametrize("line", [
    "import os",
    "from os import system",
    "x = __import__('os').system('touch {marker}')",
    "open('{marker}', 'w')",
    "x = open('{marker}', 'w')",
    "x = eval(\"__import__('os').system('touch {marker}')\")",
    "x = dict.__class__",
    "x = (1).__class__.__bases__",
    "x = [c for c in ().__class__.__mro__]",
    "x = (lambda: 1)()",
    "x = f\"{{__import__('os').system('touch {marker}')}}\"",
    "def f(): pass",
    "if True: x = 1",
    "x: int = 1",
    "x.y = 1",
    "x = y",
])
def test_unsafe_original_config_is_refused_naming_the_line(tmp_path, line):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "config.py", "model = 'robnet_free'\nseed = 3\n" + line.format(marker=marker) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:3" in str(info.value)
    assert not marker.exists()


def test_original_expressions_that_are_allowed():
    text = """
'''docstring'''
eps = 8 / 255.
steps = 2 * 5
model = 'robnet_free'
model_param = dict(C=36, share=False, nested=dict(a=-1, b=[1, 2, (3, 4)]), neg=-2.5, d={'k': eps})
attack_param = {'epsilon': eps, 'num_steps': steps + 10, 'step_size': eps / 4, 'p': 2 ** 10, 'm': 7 % 3}
a = b = 1
"""
    values = parse_original_config(text)
    assert values["eps"] == 8 / 255 and values["steps"] == 10
    assert values["model_param"] == {"C": 36, "share": False, "nested": {"a": -1, "b": [1, 2, (3, 4)]},
                                     "neg": -2.5, "d": {"k": 8 / 255}}
    assert values["attack_param"] == {"epsilon": 8 / 255, "num_steps": 20, "step_size": 2 / 255, "p": 1024, "m": 1}
    assert values["a"] == values["b"] == 1
    assert "docstring" not in values.values()


@pytest.mark.parametrize("expression, why", [
    ("9 ** 9 ** 9", "exponent too large"),
    ("2 ** 100000", "exponent too large"),
    ("'a' * 10 ** 9", "repetition"),
    ("[0] * 10 ** 9", "repetition"),
    ("(0,) * 10 ** 9", "repetition"),
    ("b'a' * 10 ** 9", "repetition"),
    ("1 / 0", "cannot compute"),
    ("-'a'", "cannot compute"),
    ("{[1]: 2}", "key"),
    ("dict(1, 2)", "keyword"),
    ("{**{}}", "unpacking"),
    ("1 << 10 ** 9", "unsupported"),
    pytest.param("-" * 2000 + "1", "nested", id="2000-nested-minus"),
    pytest.param("1" + "+1" * 5000, "nested", id="5000-chained-plus"),
])
def test_dangerous_or_broken_expressions_raise_config_error(expression, why):
    with pytest.raises(ConfigError, match=why) as info:
        parse_original_config(f"seed = 1\nx = {expression}\n", "cfg.py")
    assert "cfg.py" in str(info.value)
    with pytest.raises(ConfigError):
        evaluate_expression(expression)


def test_the_original_config_reader_bounds_what_it_builds(tmp_path):
    """Input built to exhaust memory: huge literals, many values, a huge file."""
    with pytest.raises(ConfigError, match="longer than"):
        parse_original_config(f"x = '{'a' * 5000}'\n", "cfg.py")
    many = "x = [" + ", ".join(["[1, 2, 3, 4, 5, 6, 7, 8, 9]"] * 20_000) + "]\n"
    with pytest.raises(ConfigError, match="more than 100,000 values"):
        parse_original_config(many, "cfg.py")
    big = _write(tmp_path / "config.py", "seed = 1\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="is not an original config file"):
        load_config(big)


def test_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path / "config.py", "seed = 1\nmodel = dict(C=36\n")
    with pytest.raises(ConfigError, match=r"config\.py:2: syntax error"):
        load_config(path)


def test_yaml_value_expressions_are_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "c.yaml", f"attack:\n  eps: \"__import__('os').system('touch {marker}')\"\n")
    with pytest.raises(ConfigError, match="attack.eps"):
        load_config(path)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="attack.eps"):
        load_config(_write(tmp_path / "d.yaml", "attack:\n  eps: '8/'\n"))


# ------------------------------------------------------------------------------- unknown keys, bad values
def test_unknown_yaml_key_suggests_the_close_match(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", "model: {Cx: 3}\n"))
    assert "'model.Cx'" in str(info.value) and "did you mean 'C'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", "attack:\n  step: 3\n"))
    assert "attack.step" in str(info.value) and "'steps'" in str(info.value)
    with pytest.raises(ConfigError, match="'sed'.*did you mean 'seed'"):
        load_config(_write(tmp_path / "c.yaml", "sed: 3\n"))


def test_unknown_original_key_suggests_the_close_match(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "config.py", "model_param = dict(Cx=3)\n"))
    assert "model_param.Cx" in str(info.value) and "did you mean 'C'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "config.py", "attack_param = {'epsilom': 0.1}\n"))
    assert "attack_param.epsilom" in str(info.value) and "'epsilon'" in str(info.value)
    with pytest.raises(ConfigError, match="'foo'"):
        load_config(_write(tmp_path / "config.py", "foo = 1\n"))
    with pytest.raises(ConfigError, match="'modl_param'.*did you mean 'model_param'"):
        load_config(_write(tmp_path / "config.py", "modl_param = dict(C=3)\n"))
    with pytest.raises(ConfigError, match="model_param must be a dict"):
        load_config(_write(tmp_path / "config.py", "model_param = 3\n"))


@pytest.mark.parametrize("text, key", [
    ("data:\n  batch_size: abc\n", "data.batch_size"),
    ("data:\n  batch_size: 0\n", "data.batch_size"),
    ("attack:\n  steps: 1.5\n", "attack.steps"),
    ("attack:\n  steps: true\n", "attack.steps"),
    ("model:\n  share: 3\n", "model.share"),
    ("model:\n  C: '36'\n", "model.C"),
    ("eval:\n  precision: fp16\n", "eval.precision"),
    ("eval:\n  attacks: 3\n", "eval.attacks"),
    ("attack:\n  eps: -0.1\n", "attack.eps"),
    ("attack:\n  eps: -8/255\n", "attack.eps"),
    ("attack:\n  norm: Linfinity\n", "attack.norm"),
    ("train:\n  epochs: -1\n", "train.epochs"),
    ("data:\n  dataset: cifar11\n", "data.dataset"),
    ("model:\n  name: robnet_fre\n", "model.name"),
    ("model: 3\n", "model"),
    ("- a\n- b\n", "mapping"),
    ("model: [\n", "invalid YAML"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", text))
    assert key in str(info.value)


def test_bad_value_in_original_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(_write(tmp_path / "config.py", "dataset_param = dict(batch_size='abc')\n"))
    with pytest.raises(ConfigError, match="attack.steps"):
        load_config(_write(tmp_path / "config.py", "attack_param = {'num_steps': 1.5}\n"))


def test_config_file_kinds(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        load_config(_write(tmp_path / "c.toml", "seed = 1\n"))
    empty = load_config(_write(tmp_path / "empty.yaml", ""))
    assert dataclasses.replace(empty, name="experiment") == Config()
    assert empty.name == "empty"
    assert load_config(None) == Config()


# ------------------------------------------------------------------------------------------- overrides
def test_dotted_overrides(tmp_path):
    path = EXPERIMENTS / "RobNet_large_cifar10" / "config.py"
    config = load_config(path, ["attack.steps=100", "attack.eps=4/255", "eval.attacks=clean,fgsm", "model.C=8",
                                "model.share=false", "checkpoint.path=null", "data.dataset=SVHN",
                                "train.lr=0.1", "eval.n=200", "name=mine"])
    assert config.attack.steps == 100 and isinstance(config.attack.steps, int)
    assert config.attack.eps == 4 / 255
    assert config.eval.attacks == ["clean", "fgsm"]
    assert config.model.C == 8 and config.model.share is False
    assert config.checkpoint.path is None
    assert config.data.dataset == "svhn"
    assert config.train.lr == 0.1 and config.eval.n == 200 and config.name == "mine"
    # everything else is untouched
    base = load_config(path)
    assert config.model.layers == base.model.layers and config.attack.step_size == base.attack.step_size
    assert config.data.batch_size == base.data.batch_size == 48
    # overrides of the YAML twin give the same result
    twin = load_config(EXPERIMENTS / "RobNet_large_cifar10" / "config.yaml",
                       ["attack.steps=100", "attack.eps=4/255", "eval.attacks=clean,fgsm", "model.C=8",
                        "model.share=false", "checkpoint.path=null", "data.dataset=SVHN", "train.lr=0.1",
                        "eval.n=200", "name=mine"])
    assert dataclasses.replace(twin, output_dir=config.output_dir) == config


@pytest.mark.parametrize("override, key", [
    ("attack.stepz=3", "attack.stepz"),
    ("atack.steps=3", "atack"),
    ("model.C=abc", "model.C"),
    ("attack.eps=-1", "attack.eps"),
    ("attack.steps", "section.key=value"),
    ("attack.steps.x=1", "steps"),
])
def test_bad_override_raises_config_error(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(EXPERIMENTS / "RobNet_free_cifar10" / "config.yaml", [override])
    assert key in str(info.value)


# ------------------------------------------------------------------------------------------------ saving
def test_save_config_round_trips_atomically(tmp_path):
    config = load_config(EXPERIMENTS / "RobNet_large_imgnet" / "config.py",
                         ["eval.attacks=clean,pgd20,fgsm", "attack.eps=4/255", "eval.n=50"])
    out = tmp_path / "run" / "config.yaml"
    assert save_config(config, out) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]  # no temp files left behind
    assert yaml.safe_load(out.read_text())["attack"]["eps"] == pytest.approx(4 / 255, rel=1e-15)
    loaded = load_config(out)
    assert loaded == config and loaded.name == "RobNet_large_imgnet"

    # saving again replaces the file in place, still without leftovers
    changed = dataclasses.replace(config, seed=123)
    save_config(changed, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]
    assert load_config(out) == changed != config


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_round_trips_through_save(tmp_path, name):
    config = load_config(EXPERIMENTS / name / "config.py")
    assert load_config(save_config(config, tmp_path / "saved.yaml")) == config


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import robnets.io

    out = tmp_path / "config.yaml"
    out.write_text("seed: 5\n")

    def broken_write(self, text, encoding=None):  # noqa: ANN001, ANN202
        Path.write_bytes(self, text[:10].encode())
        raise OSError("disk full")

    monkeypatch.setattr(robnets.io.Path, "write_text", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_config(Config(), out)
    monkeypatch.undo()
    assert out.read_text() == "seed: 5\n"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_chained_growth_and_nan_are_refused(tmp_path):
    from robnets.config import load_config
    from robnets.errors import ConfigError

    path = tmp_path / "config.py"
    path.write_text("a = 10 ** 64\nb = a ** 64\nc = b ** 64\n")
    with pytest.raises(ConfigError, match="number too large"):
        load_config(path)
    with pytest.raises(ConfigError, match="attack.eps must be a finite non-negative number"):
        load_config(None, ["attack.eps=.nan"])
