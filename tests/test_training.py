"""Training: the original recipe's schedule and parameter groups, every method lowering the adversarial
loss, exact resume after an interruption, DDP (2 gloo processes) equal to one process, CLI and main.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robnets
from robnets.attacks import PGD
from robnets.config import load_config
from robnets.data import load_sample
from robnets.models.checkpoint import read_checkpoint
from robnets.training import METHODS, MethodSettings, learning_rate, make_inputs, no_weight_decay_groups, training_loss
from robnets.training.schedule import build_optimizer
from robnets.training.trainer import Trainer

from .conftest import REPO

TINY = ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.batch_size=16", "train.val_size=32",
        "train.lr=0.05", "train.scale_lr=false", "train.device=cpu", "train.val_attack_steps=2", "seed=3",
        "train.co_probe_size=32"]


@pytest.fixture
def tiny_cifar(tmp_path):
    """A CIFAR-10 folder (npz layout) made of the embedded real sample: 320 train, 180 test images."""
    sample = load_sample()
    images, labels = sample.images.numpy(), sample.labels.numpy()
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "train.npz", images=images[:320], labels=labels[:320])
    np.savez(folder / "test.npz", images=images[320:], labels=labels[320:])
    return tmp_path / "data"


def test_original_schedule_values():
    rates = {e: learning_rate(e, lr=1.2, lr_min=0.001, epochs=150, warmup_epochs=20, warmup_lr=0.02)
             for e in (0, 10, 19, 20, 95, 169)}
    assert rates[0] == pytest.approx(0.02)
    assert rates[10] == pytest.approx(0.61)
    assert rates[19] == pytest.approx(0.02 + 19 / 20 * 1.18)
    assert rates[20] == pytest.approx(1.2)
    assert rates[95] == pytest.approx(0.001 + 1.199 / 2)
    assert rates[169] == pytest.approx(0.001 + 1.199 * (1 + np.cos(np.pi * 149 / 150)) / 2)
    assert learning_rate(170, lr=1.2, lr_min=0.001, epochs=150, warmup_epochs=20) == pytest.approx(0.001)


def test_train_compile_compiles_only_the_training_attack_engine():
    """train.compile=true: the engine crafting training attacks (one batch shape) is compiled; validation and
    the overfitting probe (other shapes) use an uncompiled one (the weight update: the next test)."""
    from robnets.errors import ConfigError

    config = load_config(None, ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.compile=true",
                                "train.device=cpu"])
    trainer = Trainer(config, output_dir="/nonexistent-not-created")
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    assert trainer._engine(model, training_attacks=True).compiled  # compiles lazily, at its first call
    assert not trainer._engine(model).compiled
    config = load_config(None, ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.device=cpu"])
    assert not Trainer(config, output_dir="/nonexistent-not-created")._engine(model, training_attacks=True).compiled
    for bypass in ("train.attack_train_mode=true", "train.fast_attack=false"):  # no fast engine to compile
        config = load_config(None, ["model.name=robnet_large_v1", "model.C=4", "model.layers=3", "train.compile=true",
                                    "train.device=cpu", bypass])
        assert Trainer(config, output_dir="/nonexistent-not-created")._engine(model, training_attacks=True) is model
    with pytest.raises(ConfigError, match="eval.compile=true compiles the fast path"):
        load_config(None, ["eval.compile=true", "eval.execution=plain"])


def test_learning_rates_scale_with_the_global_batch():
    config = load_config(REPO / "experiments/RobNet_free_cifar10/config.py")
    trainer = Trainer(config, output_dir="/nonexistent-not-created")
    assert trainer.global_batch == 48
    assert trainer.base_lr == pytest.approx(1.2 * 48 / 1536)
    assert trainer.warmup_lr == pytest.approx(0.02 * 48 / 1536)
    assert trainer.total_epochs == 170
    config = load_config(REPO / "experiments/RobNet_free_cifar10/config.py", ["train.accumulate=32"])
    assert Trainer(config, output_dir="/nonexistent-not-created").base_lr == pytest.approx(1.2)


@pytest.mark.parametrize("name", ["robnet_free", "preact_resnet18"])
def test_no_weight_decay_on_batchnorm_and_biases(name):
    model = robnets.create_model(name, **({"C": 4} if name == "robnet_free" else {}))
    decay, free = no_weight_decay_groups(model, 1e-4)
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    biases = {id(m.bias) for m in model.modules() if getattr(m, "bias", None) is not None and not
              isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in free["params"]} == bn_params | biases
    assert all(p.dim() > 1 for p in decay["params"])  # only conv / linear weights decay
    assert decay["weight_decay"] == 1e-4 and free["weight_decay"] == 0.0
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def _recalibrate(model, x):
    """Running BN statistics := this batch's, so eval mode computes what train mode trained."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def _pgd_loss(model, x, y):
    _recalibrate(model, x)
    x_adv = PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, seed=0)(x, y)
    with torch.no_grad():
        return F.cross_entropy(model(x_adv), y).item()


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_the_adversarial_loss(method):
    torch.manual_seed(0)
    x, y = load_sample().batch(0, 32)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    settings = MethodSettings(name=method, steps=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    before = _pgd_loss(model, x, y)
    clean_before = F.cross_entropy(_recalibrate(model, x)(x), y).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x_in = make_inputs(model, x, y, settings, g)
        model.train()
        loss, _ = training_loss(model, x, x_in, y, settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if method == "standard":
        assert F.cross_entropy(_recalibrate(model, x)(x), y).item() < clean_before
    else:
        assert _pgd_loss(model, x, y) < before


def test_adversarial_inputs_respect_each_method_geometry():
    torch.manual_seed(0)
    x, y = load_sample().batch(0, 16)
    model = robnets.create_model("robnet_large_v1", C=4, layers=3).train()
    eps = 8 / 255
    for method, radius in (("pgd", eps), ("fgsm_rs", eps), ("trades", eps), ("nfgsm", 3 * eps)):
        x_in = make_inputs(model, x, y, MethodSettings(name=method, steps=2), torch.Generator().manual_seed(0))
        assert (x_in - x).abs().max() <= radius + 1e-6 and x_in.min() >= 0 and x_in.max() <= 1
    assert model.training  # the attack restored the mode


def _train(overrides, data_dir, out, resume=None):
    config = load_config(None, TINY + overrides) if resume is None else load_config(out / "config.yaml", overrides)
    return Trainer(config, output_dir=out, data_dir=data_dir, resume=resume, progress=False,
                   log_to_stderr=False).run()


@pytest.mark.slow
def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_cifar, tmp_path):
    common = ["train.method=fgsm_rs", "train.epochs=2", "train.ema_decay=0.9", "data.cutout=true",
              "train.train_size=96"]  # 64 training images: 4 steps per epoch
    full = _train(common, tiny_cifar, tmp_path / "full")
    assert full.completed and full.epoch == 2
    part = _train(common + ["train.max_steps=3"], tiny_cifar, tmp_path / "part")  # stops mid-epoch 1
    assert not part.completed and (part.epoch, part.step) == (0, 3)
    assert not (tmp_path / "part" / "final.safetensors").exists()
    resumed = _train(["train.max_steps=null"], tiny_cifar, tmp_path / "part", resume=tmp_path / "part")
    assert resumed.completed
    a = read_checkpoint(tmp_path / "full" / "final.safetensors").state_dict
    b = read_checkpoint(tmp_path / "part" / "final.safetensors").state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = lambda p: [json.loads(l) for l in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731, E741
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}  # noqa: E731
    assert [drop(r) for r in lines(tmp_path / "full")] == [drop(r) for r in lines(tmp_path / "part")]
    assert not list((tmp_path / "part").glob("*.tmp"))


@pytest.mark.slow
def test_train_compile_runs_the_weight_update_through_torch_compile(tiny_cifar, tmp_path, monkeypatch):
    """train.compile=true compiles the weight update's train-mode forward/backward (BatchNorm batch statistics,
    running-statistics updates, weight gradients) and trains the same weights as eager. Dynamo's eager backend
    stands in for Inductor (the same graph capture, exact arithmetic, no minutes of C++ builds; Inductor's
    one-step equivalence: tests/test_fast_path.py); fast_attack=false keeps the attack engine out of it."""
    from robnets import acceleration

    compiled = []

    real = acceleration.compile_for_training

    def recording(module):
        compiled.append(module)
        return real(module, backend="eager")

    monkeypatch.setattr(acceleration, "compile_for_training", recording)
    common = ["train.method=pgd", "train.attack_steps=1", "train.epochs=1", "train.train_size=80",
              "train.fast_attack=false", "train.co_probe_size=0"]  # 48 training images: 3 steps
    assert _train(common, tiny_cifar, tmp_path / "eager").completed
    assert not compiled
    torch._dynamo.reset()
    result = _train(common + ["train.compile=true"], tiny_cifar, tmp_path / "compiled")
    assert result.completed and len(compiled) == 1 and isinstance(compiled[0], robnets.models.RobNet)
    assert load_config(tmp_path / "compiled" / "config.yaml").train.compile  # saved with the run
    a = read_checkpoint(tmp_path / "eager" / "final.safetensors").state_dict
    b = read_checkpoint(tmp_path / "compiled" / "final.safetensors").state_dict
    assert a.keys() == b.keys()  # the source model's keys, no "_orig_mod." prefix
    start = robnets.create_model("robnet_large_v1", C=4, layers=3).state_dict()
    moved = [k for k in a if k.endswith("running_mean") and not torch.equal(b[k], start[k])]
    assert moved  # BatchNorm running statistics were updated through the compiled graph
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_final_weights_carry_metadata_and_best_is_kept(tiny_cifar, tmp_path):
    result = _train(["train.method=pgd", "train.attack_steps=2", "train.epochs=1"], tiny_cifar, tmp_path / "run")
    meta = read_checkpoint(tmp_path / "run" / "final.safetensors").metadata
    assert meta["model"] == "robnet_large_v1" and meta["dataset"] == "cifar10"
    assert meta["threat_model"] == "Linf" and float(meta["eps"]) == pytest.approx(8 / 255)
    assert meta["architecture"] == str(robnets.models.ROBNET_LARGE)
    assert (tmp_path / "run" / "best.safetensors").exists() and result.best_val_robust is not None
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss", "train_adv_acc", "val_clean", "val_robust", "lr"} <= set(record)
    model = robnets.load_model(tmp_path / "run" / "final.safetensors")
    assert model.config["C"] == 4


def _torchrun():
    exe = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return exe if os.path.exists(exe) else None


@pytest.mark.slow
@pytest.mark.skipif(_torchrun() is None, reason="torchrun is not installed")
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_cifar, tmp_path):
    """2 DDP ranks x 16 images == 1 process x 2 micro-batches of 16 (same shards, same BatchNorm groups). The
    DDP run also compiles its weight update (train.compile, torch.compile of the DDP module, Dynamo's eager
    backend: the same arithmetic, so the match stays exact up to the reduction order)."""
    args = TINY + ["train.method=pgd", "train.attack_steps=2", "train.attack_train_mode=true",
                   "train.epochs=1", "train.train_size=96", "train.val_size=32", "train.compile=true"]
    sets = [a for kv in args for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBNETS_COMPILE_BACKEND": "eager"}
    ddp = subprocess.run(
        [_torchrun(), "--nproc_per_node=2", "--master_port=29533", "-m", "robnets", "train", "--data-dir",
         str(tiny_cifar), "--output-dir", str(tmp_path / "ddp"), "--no-progress", "--distributed", *sets],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: CPU kernels' rounding depends on the thread count
    try:
        single = _train(["train.method=pgd", "train.attack_steps=2", "train.attack_train_mode=true",
                         "train.epochs=1", "train.train_size=96", "train.accumulate=2"], tiny_cifar, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert single.completed
    a = read_checkpoint(tmp_path / "ddp" / "final.safetensors").state_dict
    b = read_checkpoint(tmp_path / "one" / "final.safetensors").state_dict
    model = robnets.create_model("robnet_large_v1", C=4, layers=3)
    params = [name for name, _ in model.named_parameters()]
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    assert worst <= 1e-5, worst
    start = robnets.create_model("robnet_large_v1", C=4, layers=3).state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in params)  # training really moved the weights
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "over 2 process(es)" in log and "global batch 32" in log and "torch.compile (eager)" in log


@pytest.mark.slow
@pytest.mark.skipif(_torchrun() is None, reason="torchrun is not installed")
def test_ddp_with_eval_mode_fast_attacks_runs(tiny_cifar, tmp_path):
    """The default path: attacks on the unwrapped fast engine, one DDP forward per step."""
    args = TINY + ["train.method=fgsm_rs", "train.epochs=1", "train.train_size=64", "train.val_size=32"]
    sets = [a for kv in args for a in ("--set", kv)]
    proc = subprocess.run(
        [_torchrun(), "--nproc_per_node=2", "--master_port=29534", "-m", "robnets", "train", "--data-dir",
         str(tiny_cifar), "--output-dir", str(tmp_path / "ddp"), "--no-progress", *sets],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "final.safetensors").exists()
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone writes


def test_original_main_py_trains(tiny_cifar, tmp_path, capsys):
    config = tmp_path / "config.py"
    config.write_text(f"""
model = 'robnet_large_v1'
model_param = dict(C=4, num_classes=10, layers=3, steps=4, multiplier=4, stem_multiplier=3, share=True, AdPoolSize=1)
dataset = 'cifar10'
dataset_param = dict(data_root='{tiny_cifar}', batch_size=16, num_workers=0, cutout=True)
seed = 10
save_path = '{tmp_path / "log"}'
train_param = dict(learning_rate=1.2, learning_rate_min=0.001, momentum=0.9, weight_decay=0.0001, epochs=1,
                   no_wd=True, warm_up_param=dict(warm_up_base_lr=0.02, warm_up_epochs=1))
attack_param = {{'attack': True, 'epsilon': 8 / 255., 'num_steps': 20, 'step_size': 2 / 255., 'random_start': True}}
""")
    # main.py's entry point in-process (tests/test_cli.py runs main.py itself as a subprocess)
    from robnets.cli import original_main

    code = original_main(["--config", str(config), "--set", "train.attack_steps=1", "--set", "train.train_size=64",
                          "--set", "train.val_size=32", "--set", "train.device=cpu", "--set", "train.val_attack_steps=1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    runs = list((tmp_path / "log").glob("train-*"))
    assert len(runs) == 1
    records = [json.loads(l) for l in (runs[0] / "metrics.jsonl").read_text().splitlines()]  # noqa: E741
    assert [r["epoch"] for r in records] == [1, 2]  # 1 warm-up epoch + 1 cosine epoch, as the original counts
    assert records[0]["lr"] == pytest.approx(0.02 * 16 / 1536)  # warm-up start, scaled to batch 16
    saved = load_config(runs[0] / "config.yaml")
    assert saved.data.cutout and saved.train.warmup_epochs == 1 and saved.train.method == "pgd"


def test_train_cli_takes_a_genotype_string(tiny_cifar, tmp_path, capsys):
    from robnets.cli import main

    genotype = "0111-011111-10101110-1101111000"
    code = main(["train", "--genotype", genotype, "--data-dir", str(tiny_cifar), "--method", "standard",
                 "--epochs", "1", "--output-dir", str(tmp_path / "g"), "--no-progress", "--set", "model.C=4",
                 "--set", "model.layers=3", "--set", "train.train_size=32", "--set", "train.val_size=32",
                 "--set", "train.batch_size=16", "--set", "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    assert read_checkpoint(tmp_path / "g" / "final.safetensors").metadata["architecture"] == genotype


def test_bad_training_input_is_one_line(capsys, tmp_path):
    from robnets.cli import main

    assert main(["train", "--model", "robnet_free", "--method", "magic"]) == 2
    assert "train.method must be one of" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a training run" in capsys.readouterr().err


def test_rank_detection_from_torchrun_and_slurm(monkeypatch):
    from robnets.distributed import detect_environment

    assert detect_environment({}) == {}
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "h1", "MASTER_PORT": "1234"}
    assert detect_environment(torchrun) == torchrun
    slurm = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu-node07"}
    found = detect_environment(slurm)
    assert found["RANK"] == "9" and found["WORLD_SIZE"] == "16" and found["LOCAL_RANK"] == "1"
    assert found["MASTER_ADDR"] == "gpu-node07" and found["MASTER_PORT"] == str(20000 + 4242)
    assert detect_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}  # a single task: no group


def test_slurm_script_launches_one_task_per_gpu(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    (fake / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SRUN_LOG": str(tmp_path / "args"),
           "GPUS": "32", "GPUS_PER_NODE": "8"}
    proc = subprocess.run(["bash", "scripts/slurm_train.sh", "gpu-part", "experiments/RobNet_large_cifar10/config.py",
                           "--set", "train.epochs=5"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["-p", "gpu-part"]
    assert "--ntasks=32" in args and "--ntasks-per-node=8" in args and "--gres=gpu:8" in args
    tail = args[args.index("robnets"):]
    assert tail == ["robnets", "train", "--config", "experiments/RobNet_large_cifar10/config.py", "--distributed",
                    "--set", "train.epochs=5"]
    usage = subprocess.run(["bash", "scripts/slurm_train.sh"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.slow
def test_catastrophic_overfitting_is_detected_and_stops_the_run(tiny_cifar, tmp_path, monkeypatch):
    """Single-step training watches PGD-10 accuracy on a fixed training batch; a collapse (here simulated:
    40 % -> 45 % -> 10 %) is flagged in the metrics with a clear warning, and train.stop_on_co ends the run
    with the weights from before the collapse kept as best.safetensors."""
    accuracies = iter([40.0, 45.0, 10.0, 10.0])
    seen_sizes = []

    def fake_probe(self, model, x, y):
        seen_sizes.append(len(x))
        return next(accuracies)

    monkeypatch.setattr(Trainer, "_probe_batch_accuracy", fake_probe)
    result = _train(["train.method=fgsm_rs", "train.epochs=4", "train.train_size=96", "train.stop_on_co=true"],
                    tiny_cifar, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["probe_pgd10_acc"] for r in records] == [40.0, 45.0, 10.0]
    assert [bool(r.get("catastrophic_overfitting")) for r in records] == [False, False, True]
    assert seen_sizes == [32, 32, 32]  # train.co_probe_size
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING catastrophic overfitting: PGD-10 accuracy on a training batch fell from 45.0% to 10.0%" in log
    assert "stopping: catastrophic overfitting" in log and result.epoch == 3


def _wait_for(path, process, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_signal_saves_the_run_and_exits_128_plus_the_signal(tiny_cifar, tmp_path):
    """SIGTERM mid-training: state saved, exit status 143 (not 0, so `train && eval` stops), then a resume
    finishes with 0."""
    import signal

    folder = tmp_path / "run"
    args = [sys.executable, "-m", "robnets", "train", "--data-dir", str(tiny_cifar), "--output-dir", str(folder),
            "--no-progress", "--epochs", "50", "--method", "fgsm_rs"]
    for override in TINY + ["train.checkpoint_every_steps=1", "train.train_size=96"]:
        args += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(folder / "state.pt", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert (folder / "state.pt").is_file() and not (folder / "final.safetensors").exists()
    assert "state saved: resume with --resume" in (folder / "train.log").read_text()
    # the printed command works as printed: the run remembers its data
    resumed = subprocess.run([sys.executable, "-m", "robnets", "train", "--resume", str(folder), "--no-progress",
                              "--set", "train.epochs=1"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.mark.slow
def test_a_signal_cuts_a_long_step_short_and_the_resume_is_exact(tiny_cifar, tmp_path, monkeypatch):
    """SIGTERM in the middle of a step that would take minutes: the run stops within seconds, saves the state
    of the last finished step (BatchNorm statistics, sums and random state of the cut step undone), and the
    resumed run ends with the weights of an uninterrupted one."""
    import signal
    import threading
    import time

    from safetensors.torch import load_file

    import robnets.training.trainer as trainer

    common = ["train.method=fgsm_rs", "train.epochs=1", "train.train_size=96", "train.checkpoint_every_steps=0"]
    assert _train(common, tiny_cifar, tmp_path / "full").completed
    real, calls = trainer.training_loss, []

    def slow_third_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = real(*args, **kwargs)  # the training forward: BatchNorm statistics have moved
        calls.append(1)
        if len(calls) == 3:  # then the third step takes "minutes"
            threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
            time.sleep(120)
        return out

    monkeypatch.setattr(trainer, "training_loss", slow_third_step)
    began = time.monotonic()
    part = _train(common, tiny_cifar, tmp_path / "part")
    assert time.monotonic() - began < 60 and not part.completed and part.stopped_by == signal.SIGTERM
    assert part.step == 2  # the two finished steps, not the cut one
    monkeypatch.setattr(trainer, "training_loss", real)
    resumed = _train([], tiny_cifar, tmp_path / "part", resume=tmp_path / "part")
    assert resumed.completed
    a = load_file(tmp_path / "full" / "final.safetensors")
    b = load_file(tmp_path / "part" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["empty", "evaluation", "search", "config only"])
def test_resume_refuses_what_is_not_a_training_run_and_writes_nothing(tmp_path, capsys, kind):
    from robnets.cli import main

    folder = tmp_path / "run"
    folder.mkdir()
    files = {"empty": [], "evaluation": ["config.yaml", "results.json", "shard.json"],
             "search": ["config.yaml", "search.log", "scoring_key.json"], "config only": ["config.yaml"]}[kind]
    for name in files:
        (folder / name).write_text("{}\n" if name.endswith(".json") else "name: x\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["train", "--resume", str(folder), "--data-dir", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a training run" in err[0], err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_a_run_stopped_before_its_first_save_resumes_from_the_beginning(tiny_cifar, tmp_path):
    from safetensors.torch import load_file

    from robnets.cli import main

    folder = tmp_path / "run"
    _train(["train.epochs=1", "train.train_size=48"], tiny_cifar, tmp_path / "reference")
    folder.mkdir()
    shutil.copyfile(tmp_path / "reference" / "config.yaml", folder / "config.yaml")  # killed before state.pt
    (folder / "train.log").write_text("[00:00:00] training run folder\n")
    assert main(["train", "--resume", str(folder), "--data-dir", str(tiny_cifar), "--no-progress"]) == 0
    ours, theirs = load_file(folder / "final.safetensors"), load_file(tmp_path / "reference" / "final.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_a_resume_that_does_not_fit_changes_nothing_and_the_run_still_resumes(tiny_cifar, tmp_path, capsys):
    from robnets.cli import main

    folder = tmp_path / "run"
    part = _train(["train.epochs=1", "train.train_size=96", "train.max_steps=1"], tiny_cifar, folder)
    assert not part.completed
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["train", "--resume", str(folder), "--data-dir", str(tiny_cifar), "--no-progress",
                 "--set", "model.C=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match model" in err[0] and "drop --set overrides" in err[0], err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # config.yaml, state.pt untouched
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_bytes(before["config.yaml"])
    (tmp_path / "broken" / "state.pt").write_bytes(before["state.pt"][:1000])  # truncated
    assert main(["train", "--resume", str(tmp_path / "broken"), "--data-dir", str(tiny_cifar)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated, corrupt" in err[0], err
    other = tmp_path / "other" / "cifar10"  # the same files with one image changed: other data
    shutil.copytree(tiny_cifar / "cifar10", other)
    with np.load(other / "train.npz") as arrays:
        images, labels = arrays["images"].copy(), arrays["labels"]
    images[5] = 255 - images[5]
    np.savez(other / "train.npz", images=images, labels=labels)
    assert main(["train", "--resume", str(folder), "--data-dir", str(other.parent), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other training data" in err[0], err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["train", "--resume", str(folder), "--data-dir", str(tiny_cifar), "--no-progress",
                 "--set", "train.max_steps=null"]) == 0
    assert (folder / "final.safetensors").is_file()


def test_threads_from_the_flag_the_environment_or_the_idle_cores(monkeypatch):
    import robnets.runtime as runtime
    from robnets.errors import RobnetsError

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("ROBNETS_THREADS", raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert runtime.configure_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("ROBNETS_THREADS", "2")
        assert runtime.configure_threads() == 2 == torch.get_num_threads()
        assert runtime.configure_threads(1) == 1  # the flag wins
        monkeypatch.delenv("ROBNETS_THREADS")
        monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _: set(range(8)), raising=False)
        monkeypatch.setattr(runtime.os, "getloadavg", lambda: (2.6, 2.0, 2.0))
        assert runtime.default_threads() == 5  # 8 cores, about 3 busy
        monkeypatch.setattr(runtime.os, "getloadavg", lambda: (11.0, 9.0, 9.0))
        assert runtime.default_threads() == 1  # never fewer than one
        monkeypatch.setattr(runtime.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert runtime.default_threads() == 2  # a torchrun rank's share
        for bad in (0, "-1", "two"):
            with pytest.raises(RobnetsError, match="positive whole number"):
                runtime.configure_threads(bad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_an_exploding_loss_is_a_warning_in_the_log_and_the_epoch_record(tiny_cifar, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="robnets.training"):
        result = _train(["train.method=standard", "train.epochs=1", "train.train_size=96", "train.lr=30",
                         "train.momentum=0.9"], tiny_cifar, tmp_path / "hot")
    assert result.completed
    record = json.loads((tmp_path / "hot" / "metrics.jsonl").read_text().splitlines()[0])
    assert "exploding" in record["loss_warning"]
    assert "WARNING: training loss" in (tmp_path / "hot" / "train.log").read_text()
    assert any("is far above chance" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_the_documented_one_minute_cpu_run(tmp_path):
    """docs/training.md's small-run example, run exactly as written (DATA = the real CIFAR-10 in ../shared)."""
    import re
    import shlex

    from .conftest import CIFAR10_NPZ

    if not (CIFAR10_NPZ / "train_0.npz").is_file():
        pytest.skip(f"needs the real CIFAR-10 training set in {CIFAR10_NPZ} (../shared)")
    text = (REPO / "docs" / "training.md").read_text()
    block = re.search(r"## A one-minute run on a CPU.*?```bash\n(.*?)```", text, re.S)[1]
    args = shlex.split(block.replace("\\\n", " "))
    assert args[0] == "robnets"
    args = [str(CIFAR10_NPZ.parent) if a == "DATA" else str(tmp_path / "run") if a == "runs/one-minute" else a
            for a in args[1:]]
    done = subprocess.run([sys.executable, "-m", "robnets", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"val_clean", "val_robust", "probe_pgd10_acc"} <= set(record)
    assert (tmp_path / "run" / "final.safetensors").is_file()
