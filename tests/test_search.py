"""Architecture search: supernet mask == standalone genotype, FSP against a direct computation, density and
budget counts, sampling, BatchNorm re-calibration, supernet and search resume, sharding over ranks, and
``robnets search`` end to end on a real CIFAR-10 subset."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from robnets.data import load_sample
from robnets.models import RobNet
from robnets.models.genotype import Genotype
from robnets.search import (Search, SearchSpace, Supernet, cell_fsp_losses, correlation, direct_edges,
                            fsp_matrix, genotype_to_mask, mask_to_genotype, rank, recalibrate_batchnorm, shard,
                            structure)
from robnets.search.runner import read_jsonl
from robnets.distributed import DistContext

from .conftest import CIFAR10_NPZ, REPO

SEARCH = str(REPO / "experiments" / "search_cifar10" / "config.yaml")
SEARCH_FREE = str(REPO / "experiments" / "search_free_cifar10" / "config.yaml")

LARGE = "1111-111111-01110110-1101010111"  # RobNet-large's shared cell


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("share", [True, False])
def test_supernet_with_a_mask_equals_the_standalone_network(share):
    torch.manual_seed(0)
    supernet = Supernet(C=4, layers=3, share=share)
    _randomize_bn(supernet)
    supernet.eval()
    x = torch.rand(3, 3, 32, 32)
    space = SearchSpace(layers=3, share=share)
    for seed in range(4):
        genotype = space.sample(random.Random(seed))
        logits = supernet.set_architecture(genotype)(x)
        net = supernet.extract(genotype).eval()
        assert isinstance(net, RobNet) and str(net.genotype) == str(genotype)
        assert torch.equal(net(x), logits)
        # the extracted network owns copies: training it leaves the supernet untouched
        before = supernet.stem[0].weight.clone()
        net.stem[0].weight.data.add_(1.0)
        assert torch.equal(supernet.stem[0].weight, before)


def test_supernet_runs_only_the_masked_operations():
    supernet = Supernet(C=4, layers=3, share=True).eval()
    genotype = Genotype.parse("1010-101010-10101010-1010101010")  # skips only: no separable conv runs
    calls = []
    for cell in supernet.cells:
        for edge in cell._ops:
            edge.conv.register_forward_hook(lambda *a: calls.append(1))
    supernet.set_architecture(genotype)(torch.rand(1, 3, 32, 32))
    assert calls == []
    with pytest.raises(Exception, match="share=True needs a genotype with exactly one cell"):
        supernet.set_architecture(Genotype.parse("_".join([LARGE] * 3)))


def test_mask_round_trip_and_bit_meaning():
    genotype = Genotype.parse(LARGE)
    mask = genotype_to_mask(genotype, layers=3)
    assert mask.shape == (3, 14, 2)
    assert mask[0, 0].tolist() == [True, True]  # '11': skip and conv
    assert mask[0, 5].tolist() == [False, True]  # '01': conv only
    assert mask[0, 8].tolist() == [True, False]  # '10': skip only
    assert mask_to_genotype(mask, share=True) == genotype
    free = SearchSpace(layers=3, share=False).sample(random.Random(3))
    assert mask_to_genotype(genotype_to_mask(free, 3)) == free


def test_fsp_matrix_equals_a_direct_computation():
    torch.manual_seed(0)
    f_in, f_out = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    expected = torch.zeros(2, 3, 5)
    for n in range(2):
        for s in range(4):
            for t in range(4):
                expected[n] += torch.outer(f_in[n, :, s, t], f_out[n, :, s, t])
    assert torch.allclose(fsp_matrix(f_in, f_out), expected / 16, atol=1e-6)
    # a reduction cell: the input is average-pooled to the output resolution first
    big = torch.randn(2, 3, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(big, 2)
    assert torch.allclose(fsp_matrix(big, f_out), fsp_matrix(pooled, f_out), atol=1e-6)


def test_cell_fsp_losses_are_zero_for_identical_inputs_and_grow_with_the_perturbation():
    torch.manual_seed(0)
    net = RobNet(LARGE, C=4, layers=3).eval()
    x = torch.rand(4, 3, 32, 32)
    assert cell_fsp_losses(net, x, x) == [0.0, 0.0, 0.0]
    small = cell_fsp_losses(net, x, (x + 0.01).clamp(0, 1))
    large = cell_fsp_losses(net, x, (x + 0.2).clamp(0, 1))
    assert all(0 < a < b for a, b in zip(small, large))
    # against a direct computation from the cell inputs and outputs
    s0 = s1 = net.stem(x)
    s0a = s1a = net.stem((x + 0.01).clamp(0, 1))
    direct = []
    for cell in net.cells:
        out, out_a = cell(s0, s1), cell(s0a, s1a)
        diff = fsp_matrix(s1, out) - fsp_matrix(s1a, out_a)
        direct.append(diff.pow(2).sum(dim=(1, 2)).mean().item())
        s0, s1, s0a, s1a = s1, out, s1a, out_a
    assert direct == pytest.approx(small, rel=1e-5)


class _OneCell(torch.nn.Module):
    """A one-cell "network" whose cell output is ``scale`` x its features repeated ``repeat`` times (a wider cell
    computing the same thing)."""

    def __init__(self, scale: float, repeat: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cells = torch.nn.ModuleList([torch.nn.Conv2d(3, 5, 3, padding=1)])
        self.scale, self.repeat = scale, repeat
        hook = self.cells[0]
        self.cells[0].forward = lambda s0, s1: self.scale * torch.cat([torch.tanh(hook._conv_forward(
            s1, hook.weight, hook.bias))] * self.repeat, 1)

    def forward(self, x):
        return self.cells[0](x, x)


def test_the_relative_fsp_loss_does_not_depend_on_width_or_activation_scale():
    from robnets.search.fsp import cell_fsp_both

    torch.manual_seed(1)
    x = torch.rand(4, 3, 8, 8)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    (raw,), (relative,) = cell_fsp_both(_OneCell(1.0, 1), x, x_adv)
    (raw_wide,), (relative_wide,) = cell_fsp_both(_OneCell(7.0, 3), x, x_adv)
    assert raw_wide == pytest.approx(raw * 49 * 3, rel=1e-4)  # the raw loss grows with scale^2 and width
    assert relative_wide == pytest.approx(relative, rel=1e-4) and 0 < relative < 1
    assert cell_fsp_losses(_OneCell(1.0, 1), x, x_adv, relative=True) == [relative]
    assert cell_fsp_both(_OneCell(1.0, 1), x, x) == ([0.0], [0.0])


def test_density_and_convolution_counts():
    assert direct_edges(4) == [i in (1, 4, 8, 13) for i in range(14)]
    s = structure(Genotype.parse(LARGE))
    codes = ["11", "11", "11", "11", "11", "01", "11", "01", "10", "11", "01", "01", "01", "11"]
    assert Genotype.parse(LARGE).to_codes()[0] == codes
    assert s["density"] == 1.0 and s["connected_per_cell"] == 14
    assert s["convs_per_cell"] == 13  # all but the '10' at edge 8
    assert s["direct_convs_per_cell"] == 3  # direct edges 1, 4, 13 carry convs; edge 8 is the skip
    assert s["skip_edge_convs_per_cell"] == 10
    # nominally 4 of 42 edges, but every node is dead (node 2 has no input): nothing computes
    dead = structure(Genotype.parse("0000-000001-00000000-0000000011_" * 2 + "0000-000000-00000000-0000000000"))
    assert dead["nominal_density"] == pytest.approx(4 / 42) and dead["density"] == 0
    assert dead["convs_per_cell"] == 0 and dead["live_nodes_per_cell"] == 0 and not dead["fully_live"]
    # a sparse live cell: 0->2 conv, 1->3 skip, 2->4 conv (direct? no: 2->4 skips node 3), 4->5 res conv (direct)
    sparse = structure(Genotype.parse("0100-001000-00000100-0000000011"))
    assert sparse["density"] == pytest.approx(4 / 14) == sparse["nominal_density"] and sparse["fully_live"]
    assert sparse["convs_per_cell"] == 3 and sparse["direct_convs_per_cell"] == 1


def test_live_only_sampling_draws_fully_live_cells_and_keeps_density_spread():
    rng = random.Random(0)
    space = SearchSpace(layers=5, mode="density", density_min=0.2, density_max=1.0, live_only=True)
    cells = [space.sample(rng).cells[0] for _ in range(300)]
    assert all(c.is_fully_live() for c in cells)
    counts = {c.num_connected for c in cells}
    assert min(counts) == 4 and max(counts) == 14 and len(counts) == 11  # every edge count a live cell can have
    free = SearchSpace(layers=4, share=False, live_only=True)
    assert all(free.sample(rng).is_fully_live() for _ in range(50))
    budget = SearchSpace(layers=3, mode="budget", conv_budget=2, live_only=True)
    assert all(g.is_fully_live() and g.cells[0].num_convs == 2 for g in (budget.sample(rng) for _ in range(30)))
    # without the filter, uniform sampling gives dead cells now and then
    assert not all(SearchSpace(layers=3).sample(rng).is_fully_live() for _ in range(200))
    with pytest.raises(Exception, match="widen the range"):
        SearchSpace(layers=3, mode="density", density_min=0.0, density_max=0.25, live_only=True)


def test_sampling_modes_respect_their_constraints():
    rng = random.Random(0)
    dense = SearchSpace(layers=6, share=False, mode="density", density_min=0.5, density_max=0.6)
    for _ in range(20):
        g = dense.sample(rng)
        assert len(g.cells) == 6 and all(7 <= c.num_connected <= 8 for c in g.cells)
    budget = SearchSpace(layers=6, mode="budget", conv_budget=4)
    for _ in range(20):
        assert budget.sample(rng).cells[0].num_convs == 4
    unique = SearchSpace(layers=6).sample_unique(50, seed=1)
    assert len({str(g) for g in unique}) == 50
    assert [str(g) for g in unique] == [str(g) for g in SearchSpace(layers=6).sample_unique(50, seed=1)]
    with pytest.raises(Exception, match="conv_budget"):
        SearchSpace(layers=6, mode="budget")
    with pytest.raises(Exception, match="widen the range"):
        SearchSpace(layers=6, mode="density", density_min=0.51, density_max=0.52)


def test_sharding_gives_each_candidate_to_exactly_one_rank():
    for n, world in ((10, 3), (7, 7), (3, 8), (64, 4)):
        shards = [shard(n, r, world) for r in range(world)]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(n))
        assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_batchnorm_recalibration_averages_over_all_batches():
    torch.manual_seed(0)
    net = RobNet(LARGE, C=4, layers=3).eval()
    batches = [torch.rand(8, 3, 32, 32) for _ in range(3)]
    assert recalibrate_batchnorm(net, batches) == 24
    assert not net.training  # mode restored
    conv = net.stem[0]
    with torch.no_grad():
        means = torch.stack([conv(b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(net.stem[1].running_mean, means, atol=1e-5)
    assert net.stem[1].momentum == 0.1  # restored


def test_correlation_values():
    c = correlation([1, 2, 3, 4], [2, 4, 5, 9])
    assert c["kendall"] == pytest.approx(1.0) and 0.9 < c["pearson"] < 1.0
    assert correlation([1, 1, 1], [1, 2, 3])["pearson"] is None


# ---------------------------------------------------------------------------------------- runs on real data
@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    """A real CIFAR-10 folder: the first 1,200 training images of ../shared (else the embedded real sample)."""
    folder = tmp_path_factory.mktemp("data") / "cifar10"
    folder.mkdir()
    source = next((p for p in (CIFAR10_NPZ / "train.npz", CIFAR10_NPZ / "train_0.npz") if p.is_file()), None)
    if source is not None:
        with np.load(source) as data:
            images, labels = data["images"][:1200], data["labels"][:1200]
    else:
        sample = load_sample()
        images, labels = sample.images.numpy(), sample.labels.numpy()
    np.savez(folder / "train.npz", images=images, labels=labels)
    np.savez(folder / "test.npz", images=images[:100], labels=labels[:100])
    return folder.parent


def _settings(**extra):
    values = {"search.C": 4, "search.layers": 3, "search.batch_size": 32, "search.supernet_max_steps": 8,
              "search.num_samples": 4, "search.finetune_steps": 3, "search.eval_size": 48, "search.val_size": 100,
              "search.eval_attack_steps": 3, "search.fsp_size": 16, "search.bn_recalibration_batches": 2,
              "search.device": "cpu", "seed": 0, "search.checkpoint_every_steps": 4}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _args(overrides):
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


@pytest.fixture(scope="module")
def finished_search(cifar_subset, tmp_path_factory):
    from robnets.cli import main

    folder = tmp_path_factory.mktemp("search") / "run"
    code = main(["search", "--config", SEARCH, "--data-dir", str(cifar_subset),
                 "--output-dir", str(folder), "--no-progress", *_args(_settings())])
    assert code == 0
    return folder


def _scores(folder):
    return {r["index"]: r for r in read_jsonl(sorted(folder.glob("scores.rank*.jsonl")))}


@pytest.mark.slow
def test_search_cli_end_to_end(finished_search, capsys, cifar_subset, tmp_path):
    folder = finished_search
    for name in ("config.yaml", "supernet.safetensors", "candidates.json", "architectures.json", "architectures.csv",
                 "analysis.json", "ranking.md", "best_genotype.txt", "best_codes.json", "density_vs_adv.png",
                 "fsp_vs_gap.png", "ranking.png"):
        assert (folder / name).is_file(), name
    assert not (folder / "supernet_state.pt").exists()
    from safetensors import safe_open

    with safe_open(str(folder / "supernet.safetensors"), framework="pt") as handle:  # what it was trained on
        assert json.loads(handle.metadata()["sampling"]) == {"mode": "uniform", "density_min": 0.0, "density_max": 1.0,
                                                             "conv_budget": None, "live_only": True}
    rows = json.loads((folder / "architectures.json").read_text())
    assert len(rows) == 4 and all(r["status"] == "scored" for r in rows)
    assert len({r["genotype"] for r in rows}) == 4
    for r in rows:
        assert 0 <= r["adv"] <= r["clean"] <= 100 and r["n"] == 48
        assert r["gap"] == pytest.approx(r["clean"] - r["adv"])
        assert len(r["fsp"]) == 3 and r["density"] == pytest.approx(Genotype.parse(r["genotype"]).density())
        assert r["fully_live"] and r["effective_params"] == r["params"] and len(r["fsp_relative"]) == 3
        assert Genotype.from_codes(r["codes"]) == Genotype.parse(r["genotype"])
    best = (folder / "best_genotype.txt").read_text().strip()
    assert best == rank(rows)[0]["genotype"]
    assert [r["adv"] for r in rows if r["genotype"] == best][0] == max(r["adv"] for r in rows)
    assert Genotype.from_codes(json.loads((folder / "best_codes.json").read_text())) == Genotype.parse(best)
    analysis = json.loads((folder / "analysis.json").read_text())
    assert analysis["n"] == 4 and "density_vs_adv" in analysis and "fsp_deep_vs_gap" in analysis
    assert (folder / "density_vs_adv.png").read_bytes()[:4] == b"\x89PNG"

    # the found architecture trains directly from its file
    from robnets.cli import main
    from robnets.models.checkpoint import read_checkpoint

    code = main(["train", "--genotype", str(folder / "best_genotype.txt"), "--data-dir", str(cifar_subset),
                 "--method", "standard", "--epochs", "1", "--output-dir", str(tmp_path / "t"), "--no-progress",
                 "--set", "model.C=4", "--set", "model.layers=3", "--set", "train.train_size=32",
                 "--set", "train.val_size=32", "--set", "train.batch_size=16", "--set", "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    assert read_checkpoint(tmp_path / "t" / "final.safetensors").metadata["architecture"] == best


def _copy_supernet(source, target):
    target.mkdir(parents=True)
    shutil.copy(source / "supernet.safetensors", target / "supernet.safetensors")


@pytest.mark.slow
def test_search_resumes_where_it_stopped(finished_search, cifar_subset, tmp_path):
    from robnets.config import load_config

    folder = tmp_path / "resumed"
    _copy_supernet(finished_search, folder)
    config = load_config(SEARCH, _settings(**{"search.stop_after": 2}))
    first = Search(config, output_dir=folder, data_dir=cifar_subset, progress=False, log_to_stderr=False).run()
    assert not first.completed and len(_scores(folder)) == 2
    config.search.stop_after = None
    second = Search(config, output_dir=folder, data_dir=cifar_subset, progress=False, log_to_stderr=False).run()
    assert second.completed and "resuming: 2 candidates already scored" in (folder / "search.log").read_text()
    reference, resumed = _scores(finished_search), _scores(folder)
    assert sorted(resumed) == [0, 1, 2, 3]
    for i in range(4):
        assert (resumed[i]["clean"], resumed[i]["adv"], resumed[i]["fsp"]) == \
            (reference[i]["clean"], reference[i]["adv"], reference[i]["fsp"])


class _FakeRanks(DistContext):
    """Two ranks run one after the other in this process (no process group: collectives are identities)."""

    def barrier(self) -> None:
        pass

    def all_reduce_sum(self, values, device):  # noqa: ANN001
        return list(values)


@pytest.mark.slow
def test_sharded_search_scores_each_candidate_once_and_merges(finished_search, cifar_subset, tmp_path):
    from robnets.config import load_config

    folder = tmp_path / "sharded"
    _copy_supernet(finished_search, folder)
    config = load_config(SEARCH, _settings())
    for rank_id in (1, 0):
        Search(config, output_dir=folder, data_dir=cifar_subset, ctx=_FakeRanks(rank=rank_id, world_size=2),
               progress=False, log_to_stderr=False).run()
    per_rank = {r: [x["index"] for x in read_jsonl([folder / f"scores.rank{r}.jsonl"])] for r in (0, 1)}
    assert per_rank == {0: [0, 2], 1: [1, 3]}
    reference = _scores(finished_search)
    merged = json.loads((folder / "architectures.json").read_text())
    assert [(r["clean"], r["adv"]) for r in merged] == [(reference[i]["clean"], reference[i]["adv"]) for i in range(4)]


class _StopAfter:
    """A stop flag that trips after ``n`` checks (simulates SIGTERM mid-training)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def raised(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.slow
def test_supernet_training_resumes_exactly(cifar_subset, tmp_path):
    from robnets.config import load_config

    config = load_config(SEARCH, _settings(**{"search.supernet_max_steps": 6}))
    results = {}
    for name, stop in (("straight", _StopAfter(10 ** 9)), ("interrupted", _StopAfter(3))):
        search = Search(config, output_dir=tmp_path / name, data_dir=cifar_subset, progress=False,
                        log_to_stderr=False)
        search.folder.mkdir()
        train, _ = search._data()
        supernet = search.build_supernet(10)
        torch.manual_seed(0)
        done = search.train_supernet(supernet, train, stop)
        if name == "interrupted":
            assert not done and (search.folder / "supernet_state.pt").is_file()
            supernet = search.build_supernet(10)
            assert search.train_supernet(supernet, train, _StopAfter(10 ** 9))
        results[name] = supernet.state_dict()
    for key, value in results["straight"].items():
        assert torch.equal(value, results["interrupted"][key]), key


@pytest.mark.slow
def test_cell_free_search_with_the_fsp_filter(cifar_subset, tmp_path):
    from robnets.config import load_config

    config = load_config(SEARCH_FREE,
                         _settings(**{"search.finetune_steps": 0, "search.supernet_max_steps": 4, "search.fsp_keep": 0.5}))
    result = Search(config, output_dir=tmp_path / "free", data_dir=cifar_subset, progress=False,
                    log_to_stderr=False).run()
    assert result.completed
    rows = json.loads((tmp_path / "free" / "architectures.json").read_text())
    assert all(len(Genotype.parse(r["genotype"]).cells) == 3 for r in rows)
    scored = [r for r in rows if r["status"] == "scored"]
    rejected = [r for r in rows if r["status"] == "rejected by FSP filter"]
    assert len(scored) == 2 and len(rejected) == 2
    assert max(r["fsp_inherited_deep"] for r in scored) <= min(r["fsp_inherited_deep"] for r in rejected)


def test_bad_search_input_is_one_line(capsys):
    from robnets.cli import main

    assert main(["search"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert main(["search", "--config", SEARCH, "--set", "search.sampling=magic"]) == 2
    assert "search.sampling must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_search_together(cifar_subset, tmp_path):
    """torchrun with 2 CPU ranks: DDP supernet, candidates split between the ranks, one merged report."""
    import os
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun is not installed")
    sets = [a for kv in _settings(**{"search.supernet_max_steps": 4, "search.finetune_steps": 1,
                                     "search.eval_size": 32, "search.fsp_size": 8})
            for a in ("--set", kv)]
    run = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29541", "-m", "robnets", "search",
                          "--distributed", "--config", SEARCH, "--data-dir", str(cifar_subset), "--output-dir",
                          str(tmp_path / "ddp"), "--no-progress", *sets],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "ddp"
    assert "2 process(es)" in (folder / "search.log").read_text()
    per_rank = {r: [x["index"] for x in read_jsonl([folder / f"scores.rank{r}.jsonl"])] for r in (0, 1)}
    assert per_rank == {0: [0, 2], 1: [1, 3]}
    assert len(json.loads((folder / "architectures.json").read_text())) == 4


# ---------------------------------------------------------------------------------- analyses with intervals
def test_bootstrap_intervals_bracket_the_estimate_and_are_seeded():
    from robnets.search.analysis import correlation as corr

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(scale=0.8, size=40)
    c = corr(x.tolist(), y.tolist())
    assert c["n"] == 40
    for key in ("pearson", "kendall"):
        low, high = c[f"{key}_ci"]
        assert low < c[key] < high and high - low < 1.0
    assert corr(x.tolist(), y.tolist()) == c  # deterministic
    noise = corr(x.tolist(), rng.normal(size=40).tolist())
    assert noise["kendall_ci"][0] < 0 < noise["kendall_ci"][1]
    # non-finite values are dropped, not propagated
    assert corr([1, 2, float("nan"), 4, 5], [1, 2, 3, 5, 4])["n"] == 4


def test_partial_correlation_separates_placement_from_the_convolution_count():
    from robnets.search.analysis import partial_correlation

    rng = np.random.default_rng(1)
    convs = rng.integers(2, 12, size=80).astype(float)
    direct = np.clip(np.round(0.4 * convs + rng.normal(0, 0.7, size=80)), 0, 4)  # correlated with the count
    only_count = (3 * convs + rng.normal(scale=1.0, size=80)).tolist()     # placement irrelevant
    raw = correlation(direct.tolist(), only_count)
    partial = partial_correlation(direct.tolist(), only_count, convs.tolist())
    assert raw["kendall"] > 0.5                       # the raw correlation is confounded
    assert partial["kendall_ci"][0] < 0 < partial["kendall_ci"][1]
    placement = (3 * convs + 4 * direct + rng.normal(scale=1.0, size=80)).tolist()
    assert partial_correlation(direct.tolist(), placement, convs.tolist())["kendall_ci"][0] > 0.2


def test_fsp_filter_effect_keeps_the_robust_half_when_loss_predicts_robustness():
    from robnets.search.analysis import fsp_filter_effect

    fsp = list(range(20))
    adv = [40 - 0.5 * f for f in fsp]
    effect = fsp_filter_effect(fsp, adv, keep=0.5)
    assert effect["difference"] == pytest.approx(5.0) and effect["top_quarter_kept"] == 1.0
    assert effect["difference_ci"][0] > 0
    reversed_effect = fsp_filter_effect(fsp, adv[::-1], keep=0.5)
    assert reversed_effect["difference"] == pytest.approx(-5.0) and reversed_effect["top_quarter_kept"] == 0.0


# ------------------------------------------------------------- one supernet for several samplings, noise floor
@pytest.mark.slow
def test_an_inherited_supernet_scores_like_the_search_that_trained_it(finished_search, cifar_subset, tmp_path):
    from robnets.config import load_config

    source = finished_search / "supernet.safetensors"
    config = load_config(SEARCH, _settings(**{"search.supernet_weights": str(source),
                                              "search.supernet_max_steps": 1}))
    result = Search(config, output_dir=tmp_path / "reuse", data_dir=cifar_subset, progress=False,
                    log_to_stderr=False).run()
    assert result.completed
    log = (tmp_path / "reuse" / "search.log").read_text()
    assert "supernet inherited from" in log and "supernet:" not in log  # nothing trained
    reference, reused = _scores(finished_search), _scores(tmp_path / "reuse")
    assert [(reused[i]["clean"], reused[i]["adv"]) for i in range(4)] == \
        [(reference[i]["clean"], reference[i]["adv"]) for i in range(4)]
    assert (tmp_path / "reuse" / "supernet.safetensors").read_bytes() == source.read_bytes()


def test_a_supernet_of_another_shape_or_no_supernet_is_refused_in_one_line(finished_search, cifar_subset,
                                                                            tmp_path, capsys):
    from robnets.cli import main
    from robnets.models import create_model
    from robnets.models.checkpoint import save_weights

    other = save_weights(create_model("robnet_large_v1", C=4, layers=3), tmp_path / "net.safetensors") or \
        tmp_path / "net.safetensors"
    cases = [(finished_search / "supernet.safetensors", ["search.C=6"], "C=4 (this search: 6)"),
             (finished_search / "supernet.safetensors", ["search.sampling=density", "search.density_min=0.5"],
              "drawn as 'uniform, fully live cells only' but this search scores 'density 0.5-1, fully live cells only'"),
             (finished_search / "supernet.safetensors", ["search.live_only=false"],
              "this search scores 'uniform, any cell'"),
             (other, [], "is not a robnets supernet"),
             (tmp_path / "missing.safetensors", [], "does not exist")]
    for i, (path, extra, message) in enumerate(cases):
        folder = tmp_path / f"bad{i}"
        code = main(["search", "--config", SEARCH, "--data-dir", str(cifar_subset), "--output-dir", str(folder),
                     "--no-progress", *_args(_settings(**{"search.supernet_weights": str(path)}) + extra)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not folder.exists()  # nothing written


@pytest.mark.slow
def test_rescoring_measures_the_noise_floor_and_resumes(finished_search, cifar_subset, tmp_path, capsys):
    from robnets.cli import main

    folder = tmp_path / "search"
    shutil.copytree(finished_search, folder)
    assert main(["search", "--rescore", str(folder), "--candidates", "3", "--finetune-seed", "1",
                 "--data-dir", str(cifar_subset), "--no-progress"]) == 0
    assert "noise floor (3 candidates" in capsys.readouterr().out
    floor = json.loads((folder / "noise_floor.json").read_text())
    again = read_jsonl([folder / "rescore-seed1.jsonl"])
    assert floor["n"] == 3 and len(again) == 3 and all(r["finetune_seed"] == 1 for r in again)
    first = _scores(finished_search)
    ranked = [r["index"] for r in rank(list(first.values()))]
    assert floor["indices"] == sorted([ranked[0], ranked[len(ranked) // 2], ranked[-1]])
    assert floor["adv_first"] == [first[i]["adv"] for i in floor["indices"]]
    # another seed draws other fine-tuning batches: the fine-tuning loss differs
    assert any(r["finetune_loss"] != first[r["index"]]["finetune_loss"] for r in again)
    assert (folder / "noise_floor.png").read_bytes()[:4] == b"\x89PNG"
    # resumable: a second call scores nothing again
    assert main(["search", "--rescore", str(folder), "--candidates", "3", "--data-dir", str(cifar_subset),
                 "--no-progress"]) == 0
    assert len(read_jsonl([folder / "rescore-seed1.jsonl"])) == 3
    # the seed the search used is refused in one line
    assert main(["search", "--rescore", str(folder), "--finetune-seed", "0", "--data-dir", str(cifar_subset)]) == 2
    assert "choose another" in capsys.readouterr().err


def test_fine_tuning_attacks_on_the_fast_engine_match_the_plain_model():
    """Candidates are fine-tuned with attacks crafted on the fast engine, which follows the changing weights."""
    from robnets.acceleration import accelerate
    from robnets.training.methods import MethodSettings, make_inputs, training_loss

    torch.manual_seed(0)
    supernet = Supernet(C=4, layers=3, share=True)
    _randomize_bn(supernet)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    settings = MethodSettings(name="nfgsm", eps=8 / 255)
    weights = []
    for fast in (False, True):
        net = supernet.extract(LARGE)
        attacker = accelerate(net, torch.device("cpu"))[0] if fast else net
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for k in range(3):
            net.train()
            x_in = make_inputs(attacker, x, y, settings, torch.Generator().manual_seed(k))
            loss, _ = training_loss(net, x, x_in, y, settings)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights.append(net.state_dict())
    for key, value in weights[0].items():
        assert torch.allclose(value.float(), weights[1][key].float(), atol=1e-4), key


def test_vectorized_bootstrap_statistics_equal_scipy_with_ties():
    from scipy import stats

    from robnets.search.analysis import _kendall_v, _pearson_v

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(4, 40)).astype(float)   # many ties, as convolution counts have
    b = rng.normal(size=(4, 40))
    b[0, :20] = 1.0
    expected_tau = [stats.kendalltau(x, y)[0] for x, y in zip(a, b)]
    expected_r = [stats.pearsonr(x, y)[0] for x, y in zip(a, b)]
    assert np.allclose(_kendall_v(a, b), expected_tau, atol=1e-12)
    assert np.allclose(_pearson_v(a, b), expected_r, atol=1e-12)
    assert np.isnan(_kendall_v(np.ones((1, 5)), b[:1, :5])).all()  # a constant column: undefined


def test_a_line_torn_by_a_crash_does_not_swallow_the_next_record(tmp_path):
    from robnets.search.runner import append_jsonl

    path = tmp_path / "scores.rank0.jsonl"
    append_jsonl(path, {"index": 0})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"index": 1, "clean": 4')  # killed mid-write
    append_jsonl(path, {"index": 1, "clean": 40.0})
    assert [r["index"] for r in read_jsonl([path])] == [0, 1]


@pytest.mark.slow
def test_a_signal_stops_the_search_resumably_with_exit_128_plus_the_signal(cifar_subset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "search"
    args = [sys.executable, "-m", "robnets", "search", "--config", SEARCH, "--data-dir", str(cifar_subset),
            "--output-dir", str(folder), "--no-progress",
            *_args(_settings(**{"search.supernet_max_steps": 10000, "search.checkpoint_every_steps": 1}))]
    process = subprocess.Popen(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "supernet_state.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "continue with --resume" in err or "state saved" in (folder / "search.log").read_text()
    assert (folder / "supernet_state.pt").is_file() and not (folder / "supernet.safetensors").exists()


def test_a_search_resume_that_does_not_fit_changes_nothing(finished_search, cifar_subset, tmp_path, capsys):
    from robnets.cli import main

    folder = tmp_path / "run"
    shutil.copytree(finished_search, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert (folder / "scoring_key.json").is_file()  # what the scores depend on, recorded with them
    for override, message in (("search.C=6", "C=4 (this search: 6)"),
                              ("search.num_samples=3", "draws other candidates"),
                              ("search.finetune_steps=9", "made with other finetune_steps"),
                              ("attack.eps=0.01", "made with other eps")):
        assert main(["search", "--resume", str(folder), "--data-dir", str(cifar_subset), "--no-progress",
                     "--set", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "saved config.yaml" in err[0], err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (folder / "supernet.safetensors").unlink()
    (folder / "supernet_state.pt").write_bytes(b"not a state")
    assert main(["search", "--resume", str(folder), "--data-dir", str(cifar_subset), "--no-progress"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_holm_adjustment_and_the_resolution_of_kendall_tau():
    from robnets.search.analysis import holm, kendall_standard_error

    # p sorted 0.01, 0.02, 0.04 (m = 3): 0.03, max(0.03, 0.04), max(0.04, 0.04); None stays None
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []
    assert kendall_standard_error(64) == pytest.approx(0.0856, abs=1e-4)
    assert kendall_standard_error(8) == pytest.approx(0.2887, abs=1e-4)
