"""Evaluation over many processes and jobs: per-point results independent of the split (1 process against 2
torchrun ranks with gloo, on real CIFAR-10 images), --shard jobs merged, partial merges marked in every file,
shards of different evaluations refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robnets.cli import main

from .conftest import REPO
from .helpers import tiny_robnet_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_robnet_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", epochs=6)


def _eval_args(weights, out, *extra):  # noqa: ANN001, ANN202
    return ["eval", "--checkpoint", str(weights), "--sample", "--no-progress", "--device", "cpu", "--sanity", "off",
            "--eps", "2/255", "--output-dir", str(out), *extra]


def _torchrun(args, port):  # noqa: ANN001, ANN202
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "robnets", *args]
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _per_example(folder):  # noqa: ANN001, ANN202
    return json.loads((folder / "results.json").read_text())["per_example"]


@pytest.mark.slow
# AutoAttack at 4/255: APGD-CE (seeded per block) breaks every point the tiny model gets right, so the later
# attacks of the cascade have no survivor to spend minutes on
@pytest.mark.parametrize("suite, n, eps, port", [("quick", 24, "2/255", 29631), ("autoattack", 16, "4/255", 29632)])
def test_one_process_and_two_ranks_give_every_point_the_same_result(weights, tmp_path, suite, n, eps, port):
    settings = ["--suite", suite, "--n-points", str(n), "--batch-size", "4", "--set", "eval.block_size=4",
                "--eps", eps]
    assert main(_eval_args(weights, tmp_path / "one", *settings)) == 0
    done = _torchrun(_eval_args(weights, tmp_path / "two", *settings), port)
    assert done.stdout.count("| clean") == 1  # one table, from rank 0
    one, two = _per_example(tmp_path / "one"), _per_example(tmp_path / "two")
    assert one == two and set(one) == ({"clean", "pgd20"} if suite == "quick" else {"clean", "autoattack"})
    merged = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [s["shard"] for s in merged["shards"]] == [0, 1] and all(s["complete"] for s in merged["shards"])
    rows = {r["attack"]: r["accuracy"] for r in merged["results"]}
    assert rows == {r["attack"]: r["accuracy"] for r in json.loads((tmp_path / "one" / "results.json").read_text())
                    ["results"]}
    if suite == "autoattack":
        assert rows["autoattack"] < rows["clean"]  # the attacks had points to work on
        assert (tmp_path / "two" / "model_info.json").is_file()


@pytest.mark.slow
def test_shard_jobs_merge_to_the_single_run_and_a_partial_merge_says_so(weights, tmp_path, capsys):
    settings = ["--attacks", "clean,pgd5,fgsm", "--n-points", "18", "--batch-size", "3", "--set", "eval.block_size=3",
                "--eps-sweep", "0,2"]
    assert main(_eval_args(weights, tmp_path / "single", *settings)) == 0
    out = tmp_path / "jobs"
    for k in (2, 0):
        assert main(_eval_args(weights, out, *settings, "--shard", f"{k}/3")) == 0
    assert main(["merge", str(out)]) == 0
    err = capsys.readouterr().err
    assert "PARTIAL" in err and "--shard 1/3" in err
    partial = json.loads((out / "results.json").read_text())
    assert partial["partial"] is True and partial["missing_shards"] == [1]
    assert "--shard 1/3" in partial["missing_commands"][0] and str(out) in partial["missing_commands"][0]
    assert "**PARTIAL**" in (out / "results.md").read_text()
    assert json.loads((out / "eps_sweep.json").read_text())["partial"] is True
    assert all(r["n"] == 12 for r in partial["results"])  # the points of the shards present
    assert main(_eval_args(weights, out, *settings, "--shard", "1/3")) == 0  # the last one merges by itself
    whole = json.loads((out / "results.json").read_text())
    assert not whole.get("partial") and whole["per_example"] == _per_example(tmp_path / "single")
    single = json.loads((tmp_path / "single" / "eps_sweep.json").read_text())["points"]
    assert [p["correct"] for p in json.loads((out / "eps_sweep.json").read_text())["points"]] == \
        [p["correct"] for p in single]


def test_merge_refuses_shards_of_different_evaluations_in_one_line(weights, tmp_path, capsys):
    base = ["--attacks", "clean", "--n-points", "8", "--batch-size", "4", "--set", "eval.block_size=4"]
    assert main(_eval_args(weights, tmp_path / "a", *base, "--shard", "0/2")) == 0
    b_args = _eval_args(weights, tmp_path / "b", *base, "--shard", "1/2")
    b_args[b_args.index("2/255")] = "4/255"
    assert main(b_args) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert main(["merge", str(tmp_path / "a" / "shard-0-of-2"), str(tmp_path / "b" / "shard-1-of-2"),
                 "--output-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not shards of one evaluation" in err[0] and "eps" in err[0]
    assert not (tmp_path / "m").exists() and sorted(p.name for p in (tmp_path / "a").iterdir()) == before
    # resuming a folder with other settings is refused too, before anything is computed
    assert main(_eval_args(weights, tmp_path / "a", *base[:-2], "--set", "eval.block_size=2", "--shard", "0/2")) == 2
    assert "holds an evaluation with other" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/3"], "K must lie in 0..N-1"),
    (["--shard", "two"], "expected K/N"),
    (["--shard", "0/9"], "at most 2 shards"),
])
def test_bad_shard_requests_are_one_line(weights, tmp_path, capsys, args, message):
    code = main(_eval_args(weights, tmp_path / "x", "--attacks", "clean", "--n-points", "8", "--batch-size", "4",
                           "--set", "eval.block_size=4", *args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_shard_needs_an_output_folder(weights, capsys):
    code = main(["eval", "--checkpoint", str(weights), "--sample", "--attacks", "clean", "--shard", "0/2"])
    assert code == 2 and "--shard needs --output-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_slurm_tasks_evaluate_their_shards_like_srun_would(weights, tmp_path):
    """Two processes given only slurm's variables (what srun sets for 2 tasks, here on one host) join one process
    group from them and merge into the result of a single process."""
    args = _eval_args(weights, tmp_path / "slurm", "--suite", "quick", "--n-points", "12", "--batch-size", "3",
                      "--set", "eval.block_size=3", "--distributed")
    tasks = []
    for rank in (0, 1):
        env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242",
                   SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT="29633")
        tasks.append(subprocess.Popen([sys.executable, "-m", "robnets", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for task in tasks:
        _, err = task.communicate(timeout=600)
        assert task.returncode == 0, err[-2000:]
    assert main(_eval_args(weights, tmp_path / "one", "--suite", "quick", "--n-points", "12", "--batch-size", "3",
                           "--set", "eval.block_size=3")) == 0
    assert _per_example(tmp_path / "slurm") == _per_example(tmp_path / "one")
    assert len(json.loads((tmp_path / "slurm" / "results.json").read_text())["shards"]) == 2


def test_the_python_call_gives_the_numbers_and_files_of_the_command_line(tmp_path, capsys):
    import robnets
    from torch import nn

    model = robnets.create_model("robnet_compact", pretrained=True)
    run = robnets.evaluate(model, "cifar10-sample", suite="quick", n=12, n_attack=6, batch_size=6,
                           output_dir=tmp_path / "api")
    assert main(["eval", "--weights", "robnet_compact", "--sample", "--n", "12", "--n-attack", "6", "--batch-size", "6",
                 "--output-dir", str(tmp_path / "cli"), "--no-progress"]) == 0
    capsys.readouterr()
    assert _per_example(tmp_path / "api") == _per_example(tmp_path / "cli")
    assert {r.attack: (r.correct, r.n) for r in run.results} == {
        r["attack"]: (r["correct"], r["n"]) for r in json.loads((tmp_path / "cli" / "results.json").read_text())["results"]}
    assert {p.name for p in (tmp_path / "api").iterdir()} >= {"results.json", "results.md", "config.yaml"}
    # any module that follows the model contract: float NCHW in [0, 1], logits out
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    run = robnets.evaluate(plain, "cifar10-sample", attacks=["clean", "fgsm"], n=8, sanity="off",
                           output_dir=tmp_path / "plain")
    assert [r.attack for r in run.results] == ["clean", "fgsm"] and run.meta["model"] == "Sequential"
