"""The command line end to end on real data: robnets eval / demo / list-models / info, python -m robnets,
and the original ``python main.py --config ... --eval_only``."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from robnets.cli import main
from robnets.config import load_config

from .conftest import REPO

FAST_EVAL = ["--n", "12", "--n-attack", "4", "--batch-size", "12", "--no-progress", "--device", "cpu"]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_eval_on_the_embedded_sample_writes_results_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--model", "robnet_free", "--sample", "--untrained", "--attacks", "clean,fgsm,pgd2",
                 "--output-dir", str(out), "--set", "model.C=8", *FAST_EVAL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "UNTRAINED" in captured.err
    for row in ("| clean ", "| fgsm ", "| pgd2 "):
        assert row in captured.out
    results = json.loads((out / "results.json").read_text())
    by_name = {r["attack"]: r for r in results["results"]}
    assert by_name["clean"]["n"] == 12 and by_name["pgd2"]["n"] == 4 and by_name["fgsm"]["n"] == 4
    assert by_name["pgd2"]["settings"]["steps"] == 2
    assert by_name["pgd2"]["settings"]["eps"] == pytest.approx(8 / 255)
    assert results["model"] == "robnet_free" and results["dataset"] == "cifar10-sample"
    assert results["weights"].startswith("UNTRAINED")
    for r in results["results"]:
        assert 0 <= r["accuracy"] <= 100 and r["correct"] == round(r["accuracy"] * r["n"] / 100)
    assert "| attack" in (out / "results.md").read_text()
    saved = load_config(out / "config.yaml")
    assert saved.model.C == 8 and saved.eval.attacks == ["clean", "fgsm", "pgd2"] and saved.eval.n == 12


@pytest.mark.slow
def test_quick_start_original_checkpoint_without_naming_the_model(tmp_path, capsys, reference_dir):
    """README quick start: an original checkpoint, no --model or --config; the architecture (robnet_free,
    C=8, 20 cells) is read from its keys and shapes."""
    checkpoint = reference_dir / "original_checkpoints" / "robnet_free_C8.pth.tar"
    out = tmp_path / "run"
    assert main(["eval", "--checkpoint", str(checkpoint), "--sample", "--attacks", "clean", "--output-dir",
                 str(out), *FAST_EVAL]) == 0
    err = capsys.readouterr().err
    assert "Architecture read from the checkpoint" in err and "C=8" in err
    result = json.loads((out / "results.json").read_text())
    assert result["model"] == "robnet_free" and result["model_args"]["C"] == 8


@pytest.mark.slow
def test_eval_with_an_original_checkpoint_on_real_cifar10(tmp_path, capsys, reference_dir, cifar10_dir):
    """The C=8 robnet_free fixture: accuracy must equal a direct computation with the loaded model."""
    checkpoint = reference_dir / "original_checkpoints" / "robnet_free_C8.pth.tar"
    out = tmp_path / "run"
    code = main(["eval", "--config", str(REPO / "experiments/RobNet_free_cifar10/config.py"),
                 "--checkpoint", str(checkpoint), "--set", "model.C=8", "--data-dir", str(cifar10_dir),
                 "--attacks", "clean", "--output-dir", str(out), *FAST_EVAL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "results.json").read_text())
    assert "original format" in result["weights"] and "sha256" in result["weights"]

    import numpy as np

    from robnets.models.loading import load_model

    model = load_model(checkpoint, "robnet_free", C=8)
    with np.load(cifar10_dir / "test.npz") as arrays:
        x = torch.from_numpy(arrays["images"][:12]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(arrays["labels"][:12])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert result["results"][0]["correct"] == correct


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--sample", "--untrained", "--attacks", "jsma"], "unknown attack 'jsma'"),
        (["eval", "--sample", "--checkpoint", "/nonexistent/w.pth.tar"], "checkpoint /nonexistent/w.pth.tar not found"),
        (["eval", "--sample"], "no weights to evaluate"),
        (["eval", "--untrained", "--data-dir", "/nonexistent"], "cifar10 not found under /nonexistent"),
        (["eval", "--sample", "--untrained", "--set", "model.Cx=3"], "unknown config key 'model.Cx'"),
        (["eval", "--sample", "--untrained", "--set", "attack.steps=abc"], "attack.steps must be an integer"),
        (["eval", "--sample", "--untrained", "--set", "model.num_classes=100"], "has 10 classes but the model has 100"),
        (["eval", "--sample", "--untrained", "--n", "0"], "--n must be at least 1"),
        (["eval", "--config", "/nonexistent.yaml"], "config file /nonexistent.yaml not found"),
        (["info", "robnet_fre"], "did you mean 'robnet_free'"),
        (["eval", "--sample", "--untrained", "--set", "attack.eps=.inf"], "attack.eps must be a finite non-negative"),
        (["eval", "--sample", "--untrained", "--set", "attack.eps=.nan"], "attack.eps must be a finite non-negative"),
        (["eval", "--sample", "--untrained", "--set", "attack.eps=8"], "exceeds the whole [0, 1] pixel range"),
        (["eval", "--sample", "--untrained", "--set", "attack.steps=-1"], "attack.steps must be a finite non-neg"),
    ],
)
def test_bad_input_gives_one_clear_error_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robnets: error:") and message in err[0], err


def test_mismatching_checkpoint_is_one_line(tmp_path, capsys, reference_dir):
    checkpoint = reference_dir / "original_checkpoints" / "robnet_free_C8.pth.tar"
    code = main(["eval", "--sample", "--model", "robnet_large_v1", "--checkpoint", str(checkpoint),
                 "--set", "model.C=8", *FAST_EVAL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not match model robnet_large_v1" in err[0]


def test_list_models_and_info(capsys):
    assert main(["list-models"]) == 0
    listed = capsys.readouterr().out
    assert "robnet_free" in listed and "robnet_large_v2" in listed
    assert main(["info", "robnet_free", "--json", "--codes"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 5_439_790
    assert round(info["flops_per_image"] / 1e9, 2) == 1.56
    assert info["genotype"].startswith("1110-111110-11010110-1111001101_") and len(info["codes"]) == 20
    assert main(["info", "robnet_large_v1", "--arg", "C=48", "--arg", "num_classes=1000",
                 "--arg", "imagenet_stem=true"]) == 0
    text = capsys.readouterr().out
    assert "12,756,448" in text and "224x224" in text


@pytest.mark.slow
def test_python_dash_m_and_demo_run_end_to_end(tmp_path):
    """The main job with the published compact RobNet (sha256-verified) on the embedded sample."""
    from robnets.models.pretrained import pretrained_info

    proc = _run("-m", "robnets", "demo", "--n", "100", "--n-attack", "2", "--attacks", "clean,pgd1",
                "--output-dir", str(tmp_path / "demo"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "| pgd1 " in proc.stdout
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["n"] for r in result["results"]] == [100, 2]
    entry = pretrained_info("robnet_compact")
    assert f"Published weights {entry.name}" in proc.stderr and "UNTRAINED" not in proc.stderr
    assert result["model"] == "robnet_compact"
    assert result["results"][0]["accuracy"] >= 30  # trained: far above chance (10%) on real test images


def _original_config(tmp_path, checkpoint, data_root, steps=2):
    text = f"""
model = 'robnet_free'
model_param = dict(C=8, num_classes=10, layers=20, steps=4, multiplier=4, stem_multiplier=3,
                   share=False, AdPoolSize=1)
dataset = 'cifar10'
dataset_param = dict(data_root='{data_root}', batch_size=8, num_workers=0)
report_freq = 10
seed = 10
save_path = '{tmp_path / "log"}'
resume_path = dict(path='{checkpoint}', origin_ckpt=True)
attack_param = {{'attack': True, 'epsilon': 8 / 255., 'num_steps': {steps}, 'step_size': 2 / 255.,
                'random_start': True}}
"""
    path = tmp_path / "config.py"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_original_main_py_eval_only(tmp_path, reference_dir, cifar10_dir):
    checkpoint = reference_dir / "original_checkpoints" / "robnet_free_C8.pth.tar"
    config = _original_config(tmp_path, checkpoint, cifar10_dir)
    proc = _run("main.py", "--config", str(config), "--eval_only", "--n", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "==> Testing on Clean Data.." in proc.stdout
    assert "==> Testing on Adversarial Data (pgd2).." in proc.stdout
    assert proc.stdout.count("* Prec@1") == 2
    runs = list((tmp_path / "log").glob("eval-*/results.json"))
    assert len(runs) == 1
    assert [r["attack"] for r in json.loads(runs[0].read_text())["results"]] == ["clean", "pgd2"]


def test_original_main_py_explains_what_is_missing(monkeypatch, capsys):
    """main.py's entry point in-process (a subprocess run of main.py is in test_original_main_py_eval_only)."""
    from robnets.cli import original_main

    monkeypatch.chdir(REPO)
    assert original_main(["--config", "./experiments/RobNet_free_cifar10/config.py", "--eval_only"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "robnets: error: ./experiments/RobNet_free_cifar10/config.py sets no resume_path for the eval_only "
        "mode; pass --checkpoint PATH"]
    assert original_main(["--config", "./experiments/RobNet_large_cifar10/config.py", "--eval_only"]) == 2
    assert "original RobNets download link is dead" in capsys.readouterr().err


TINY_EVAL = ["--model", "robnet_large_v1", "--set", "model.C=4", "--set", "model.layers=3", "--untrained",
             "--sample", "--no-progress", "--device", "cpu"]


@pytest.mark.slow
def test_paper_suite_and_eps_sweep(tmp_path, capsys):
    out = tmp_path / "paper"
    code = main(["eval", *TINY_EVAL, "--suite", "paper", "--n", "6", "--eps-sweep", "0,4,8,16",
                 "--set", "eval.sweep_steps=3", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert [r["attack"] for r in result["results"]] == ["clean", "fgsm", "pgd20", "pgd100", "deepfool", "mifgsm"]
    assert {f["name"] for f in result["sanity"]} >= {"randomized_outputs", "zero_gradients", "eps_zero"}
    sweep = json.loads((out / "eps_sweep.json").read_text())
    accuracies = [p["accuracy"] for p in sweep["points"]]
    assert [p["eps_255"] for p in sweep["points"]] == pytest.approx([0, 4, 8, 16])
    assert accuracies[0] == by_name_accuracy(result, "clean")
    assert all(b <= a for a, b in zip(accuracies, accuracies[1:]))
    assert (out / "eps_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Sanity checks" in (out / "results.md").read_text()


def by_name_accuracy(result, name):
    return next(r["accuracy"] for r in result["results"] if r["attack"] == name)


def test_autoattack_suite_rows_are_a_cascade(tmp_path, capsys):
    out = tmp_path / "aa"
    code = main(["eval", *TINY_EVAL, "--suite", "autoattack", "--n", "4", "--output-dir", str(out),
                 "--sanity", "off"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["attack"] for r in rows] == ["clean", "aa:apgd-ce", "aa:apgd-t", "aa:fab-t", "aa:square", "autoattack"]
    accuracies = [r["accuracy"] for r in rows]
    assert all(b <= a for a, b in zip(accuracies[:-1], accuracies[1:-1])) and accuracies[-1] == accuracies[-2]
    blocks = [json.loads(line) for line in (out / "blocks.jsonl").read_text().splitlines()]
    assert [b["attack"] for b in blocks] == ["clean", "autoattack"]  # kept as they come: resumable
    assert not list(out.glob("aa_block*.safetensors"))  # a finished block's chunk state is gone
    card = json.loads((out / "model_info.json").read_text())  # RobustBench's model_info fields
    for key in ("name", "link", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote"):
        assert key in card, key
    assert card["eps"] == "8/255" and card["dataset"] == "cifar10" and card["additional_data"] is False
    assert card["autoattack_acc"] == f"{accuracies[-1]:.2f}" and card["clean_acc"] == f"{accuracies[0]:.2f}"
    assert "first 4 test points" in card["footnote"] and "pyautoattack" in card["footnote"]
    assert stat.S_IMODE((out / "results.json").stat().st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_n_bounds_the_sanity_checks_to_the_tables_images(tmp_path, monkeypatch, capsys):
    from robnets.evaluation import sanity

    seen = []
    real = sanity.run_sanity_checks
    monkeypatch.setattr(sanity, "run_sanity_checks", lambda model, x, y, **kw: seen.append(len(y)) or real(
        model, x, y, **kw))
    assert main(["eval", *TINY_EVAL, "--attacks", "clean", "--n", "6", "--output-dir", str(tmp_path / "r")]) == 0
    assert seen == [6]


def test_eval_help_lists_every_attack_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "threat model and attacks:" in text
    for name in ("fgsm", "pgd<steps>", "pgdl2-<steps>", "mifgsm", "cw", "deepfool", "apgd-ce", "apgd-t", "fab-t",
                 "square", "autoattack", "--eps", "--norm", "--weights"):
        assert name in text, name


def test_library_messages_go_through_logging(tmp_path, caplog):
    """A Python user sees the evaluation's lines only through logging, and can silence them there."""
    from robnets.evaluation.pipeline import run_evaluation

    config = load_config(None, ["model.name=robnet_large_v1", "model.C=4", "model.layers=3",
                                "data.dataset=cifar10-sample", "eval.attacks=clean", "eval.n=4", "eval.sanity=off",
                                "eval.device=cpu"])
    with caplog.at_level(logging.INFO, logger="robnets"):
        run_evaluation(config, untrained=True, output_dir=tmp_path / "r", progress=False)
    assert any("Evaluating robnet_large_v1" in r.getMessage() for r in caplog.records)


def test_transfer_and_eot(tmp_path, capsys):
    import robnets
    from robnets.models.checkpoint import save_weights

    torch.manual_seed(1)
    source = robnets.create_model("robnet_large_v1", C=4, layers=3)
    save_weights(source, tmp_path / "source.safetensors", dataset="cifar10")
    out = tmp_path / "transfer"
    code = main(["eval", *TINY_EVAL, "--attacks", "clean,pgd2", "--n", "6", "--transfer-from",
                 str(tmp_path / "source.safetensors"), "--eot", "2", "--output-dir", str(out), "--sanity", "off"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["attack"] for r in rows] == ["clean", "transfer:pgd2+eot2"]  # the row says it is EOT
    assert rows[1]["settings"]["transfer_from"] and rows[1]["settings"]["eot_iter"] == 2
    # a published weights name works as the transfer source, as --weights takes it
    code = main(["eval", *TINY_EVAL, "--attacks", "clean,fgsm", "--n", "4", "--transfer-from", "robnet_compact",
                 "--output-dir", str(tmp_path / "by_name"), "--sanity", "off"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "by_name" / "results.json").read_text())["results"]
    assert [r["attack"] for r in rows] == ["clean", "transfer:fgsm"]


def test_eval_builds_the_architecture_a_project_checkpoint_names(tmp_path, capsys):
    """`robnets eval --checkpoint W.safetensors` without --model/--config rebuilds W's own architecture."""
    import robnets
    from robnets.cli import main
    from robnets.models.checkpoint import save_weights

    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    path = save_weights(model, tmp_path / "w.safetensors", model_name="robnet_large_v1", dataset="cifar10")
    assert main(["eval", "--checkpoint", str(path), "--sample", "--n", "4", "--attacks", "clean",
                 "--output-dir", str(tmp_path / "ev"), "--no-progress", "--sanity", "off"]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["model"] == "robnet_large_v1"
    assert result["parameters"] == sum(p.numel() for p in model.parameters())


def _weights(tmp_path, corrupt):
    from robnets.models import create_model
    from robnets.models.checkpoint import save_weights

    torch.manual_seed(0)
    model = create_model("robnet_large_v1", C=4, layers=3)
    corrupt(model)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, dataset="cifar10")
    return path


def test_weights_that_cannot_be_right_are_refused_in_one_line(tmp_path, capsys):
    nan = _weights(tmp_path, lambda m: m.classifier.weight.data.__setitem__((0, 0), float("nan")))
    assert main(["eval", "--sample", "--checkpoint", str(nan), "--attacks", "clean", "--n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifier.weight holds NaN or infinite values" in err[0], err


def test_integer_tensors_where_weights_belong_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from robnets.errors import CheckpointError
    from robnets.models.loading import load_model
    from robnets.models.checkpoint import read_checkpoint

    path = _weights(tmp_path, lambda m: None)
    metadata = {k: v for k, v in read_checkpoint(path).metadata.items() if k != "tensors_sha256"}  # made elsewhere
    tensors = load_file(path)
    tensors["classifier.weight"] = tensors["classifier.weight"].round().to(torch.int32)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="classifier.weight is int32 but the model needs floating-point"):
        load_model(path)


def test_non_finite_logits_during_evaluation_are_an_error():
    from robnets.errors import RobnetsError
    from robnets.evaluation import evaluate
    from robnets.data import load_sample

    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    with pytest.raises(RobnetsError, match="non-finite logits"):
        evaluate(NaNModel(), load_sample(), {"clean": None}, n=8, progress=False)


@pytest.mark.parametrize("args, message", [
    (["eval", "--suite", "bogus"], "invalid choice: 'bogus'"),
    (["eval", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["eval", "--n"], "expected one argument"),
])
def test_usage_mistakes_are_one_line_not_the_whole_usage(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("robnets: error:") and message in err[0]


def test_output_into_a_closed_pipe_ends_quietly():
    done = subprocess.run(f"{sys.executable} -m robnets weights --json | head -c 1", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "[" and done.stderr == "", done.stderr


def test_messages_that_lead_somewhere(tmp_path, capsys):
    import robnets
    from robnets.models.checkpoint import save_weights

    # a folder given as a checkpoint says so, and names the weights files in it
    save_weights(robnets.create_model("robnet_large_v1", C=4, layers=3), tmp_path / "run" / "final.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--sample", *FAST_EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory, not a weights file" in err[0] and "final.safetensors" in err[0]
    # a 100-class checkpoint on a 10-class dataset: the weights decide, no advice to change num_classes
    hundred = robnets.create_model("robnet_large_v1", C=4, layers=3, num_classes=100)
    torch.save({"state_dict": hundred.state_dict(), "epoch": 1, "best_acc": 0.0}, tmp_path / "c100.pth.tar")
    assert main(["eval", "--checkpoint", str(tmp_path / "c100.pth.tar"), "--sample", *FAST_EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classify 100 classes" in err[0] and "cifar100" in err[0] and "set model" not in err[0]
    # a checkpoint that does not fit --config: the settings it does fit, read from its shapes
    assert main(["eval", "--config", "RobNet_large_cifar10", "--checkpoint", str(tmp_path / "c100.pth.tar"),
                 "--sample", *FAST_EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "The file fits model.name=robnet_large_v1 model.C=4 model.layers=3" in err[0]
    # published numbers only for the published file itself
    assert main(["eval", "--weights", "robnet_compact", "--sample", "--n", "4", "--attacks", "clean",
                 "--output-dir", str(tmp_path / "pub"), *FAST_EVAL]) == 0
    published = json.loads((tmp_path / "pub" / "results.json").read_text())
    assert published["published_weights"]["name"] == "robnet_compact.nfgsm_3ep_cifar10"
    other = robnets.create_model("robnet_compact")
    save_weights(other, tmp_path / "other.safetensors", model_name="robnet_compact")
    assert main(["eval", "--checkpoint", str(tmp_path / "other.safetensors"), "--sample", "--n", "4", "--attacks",
                 "clean", "--output-dir", str(tmp_path / "other"), *FAST_EVAL]) == 0
    assert "published_weights" not in json.loads((tmp_path / "other" / "results.json").read_text())
    capsys.readouterr()


def test_a_rate_from_no_measurable_time_is_not_printed():
    from robnets.evaluation.report import results_table
    from robnets.evaluation.runner import AttackResult

    row = AttackResult("clean", 3, 4, 0.0)
    assert row.images_per_s is None and row.to_dict()["images_per_s"] is None
    assert results_table([row]).splitlines()[-1].replace(" ", "").endswith("|-|")
