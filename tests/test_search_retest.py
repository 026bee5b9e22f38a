"""The search re-test's page and experiment driver: the page is what its committed run files give, and the
registered experiment's arms follow its rules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

STUDY = REPO / "studies" / "search_retest"


@pytest.mark.slow
def test_the_page_is_what_the_committed_run_files_give():
    """report.py --check recomputes every generated block of docs/search-retest.md from the run files."""
    done = subprocess.run([sys.executable, str(STUDY / "report.py"), "--check"], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_registered_arms_follow_their_rules():
    arms_file = STUDY / "decisive" / "arms.json"
    if not arms_file.is_file():
        pytest.skip("the decisive experiment's arms are not picked yet (the search runs/cell_live is not finished)")
    sys.path.insert(0, str(STUDY))
    import decisive

    arms = json.loads(arms_file.read_text())
    target = decisive.parameters(decisive.ROBNET_LARGE, decisive.REFERENCE_C)
    assert arms["reference_params"] == target == 408_474
    names = [a["name"] for a in arms["arms"]]
    assert names == ["robnet_large", "top1", "top2", "top3", "middle1", "middle2", "bottom1", "bottom2", "bottom3"]
    for arm in arms["arms"]:
        assert decisive.parameters(arm["genotype"], arm["C"]) == arm["params"]
        assert abs(arm["params"] / target - 1) <= 0.03
        assert arm["seeds"] == (6 if arm["name"] in ("robnet_large", "top1") else 3)
    for passed in arms["passed_over"]:
        assert abs(passed["params"] / target - 1) > 0.03
    points = json.loads((STUDY / "decisive" / "points.json").read_text())
    assert len(set(points["pgd20"])) == 2000 and points["apgd"] == points["pgd20"][:500]


def _report_module():
    if str(STUDY) not in sys.path:
        sys.path.insert(0, str(STUDY))
    import report

    return report


def _fake_runs(folder, arms, pgd20, apgd, seeds=None):  # noqa: ANN001
    """Run files as decisive.py writes them: eval.json / apgd.json with per-image bits, and a train.log. ``pgd20``
    and ``apgd`` map (arm, seed) to an accuracy in % (None: that run has no such file)."""
    import numpy as np

    from robnets.io import pack_bits

    def bits(accuracy, n, seed):  # noqa: ANN001, ANN202
        flags = np.zeros(n, dtype=bool)
        flags[np.random.default_rng(seed).permutation(n)[:round(accuracy * n / 100)]] = True
        return {"accuracy": 100 * flags.mean(), "bits": pack_bits(flags), "n": n}

    for arm in arms["arms"]:
        for seed in range(arm["seeds"] if seeds is None else seeds):
            accuracy = pgd20(arm["name"], seed)
            run = folder / "runs" / f"{arm['name']}-seed{seed}"
            run.mkdir(parents=True)
            (run / "train.log").write_text("[10:00:00] training run folder x\n[10:40:00] done: x\n")
            clean = bits(accuracy + 15, 10_000, seed)
            (run / "eval.json").write_text(json.dumps({"clean": clean, "pgd20": bits(accuracy, 2000, 100 + seed)}))
            robust = apgd(arm["name"], seed)
            if robust is not None:
                flags = bits(robust, 500, 200 + seed)
                (run / "apgd.json").write_text(json.dumps({"robust_accuracy": flags["accuracy"],
                                                           "robust_bits": flags["bits"], "n": 500}))


@pytest.mark.parametrize("case", ["search wins", "paper wins", "no difference", "APGD disagrees",
                                  "not all done"])
def test_the_registered_decisions_follow_their_rules(case, tmp_path, monkeypatch):
    """decisions() on made-up run files whose answer is known: verdict (a) from the interval of Kendall tau,
    verdict (b) from the seed-paired PGD-20 interval with APGD agreeing in sign, and no verdict before every run
    (APGD included) is done."""
    arms_file = STUDY / "decisive" / "arms.json"
    if not arms_file.is_file():
        pytest.skip("the decisive experiment's arms are not picked yet (the search runs/cell_live is not finished)")
    report = _report_module()
    arms = json.loads(arms_file.read_text())
    folder = tmp_path / "decisive"
    folder.mkdir()
    for name in ("arms.json", "points.json"):
        (folder / name).write_text((STUDY / "decisive" / name).read_text())
    score = {a["name"]: a["search_adv"] for a in arms["arms"]}
    wobble = [0.4, -0.3, 0.1, -0.5, 0.2, 0.3]  # seed-to-seed noise shared by all arms (pairing)
    jitter = [0.3, -0.2, 0.1, 0.0, -0.1, 0.2]  # the pairs' own spread
    lead = {"search wins": 2.0, "paper wins": -2.0, "no difference": 0.0, "APGD disagrees": 2.0,
            "not all done": 2.0}[case]

    def pgd20(arm, seed):  # noqa: ANN001, ANN202
        if arm == "robnet_large":
            return 25.0 + wobble[seed] + (0.3 if seed % 2 else -0.3) * (case == "no difference")
        if case == "no difference":  # the ranking says nothing: every searched arm alike
            return 25.0 + wobble[seed] + (0.25 if seed % 2 == 0 else -0.25)
        return 25.0 + lead + (score[arm] - score["top1"]) * 1.5 + wobble[seed] + jitter[seed]

    def apgd(arm, seed):  # noqa: ANN001, ANN202
        if arm not in ("top1", "robnet_large") or (case == "not all done" and arm == "top1" and seed == 5):
            return None
        if case == "APGD disagrees" and arm == "top1":  # PGD-20 favours top1, the stronger attack does not
            return pgd20("robnet_large", seed) - 6.0
        return pgd20(arm, seed) - 5.0

    _fake_runs(folder, arms, pgd20, apgd)
    monkeypatch.setattr(report, "DECISIVE", folder)
    monkeypatch.setattr(report, "BOOTSTRAP", 1000)
    text = report.decisive_blocks()["decisive-decisions"]
    if case == "not all done":
        assert text.startswith("*33 of 33 runs done: no verdict") and "Kendall" not in text
        return
    assert "Kendall" in text and "seeds 0, 1, 2, 3, 4, 5" in text
    expected_a = "**no evidence that it is informative**" if case == "no difference" else "**informative**"
    expected_b = {"search wins": "**the searched cell is more robust than RobNet-large's**",
                  "paper wins": "**RobNet-large's cell is more robust than the searched cell**",
                  "no difference": "**no difference detected**",
                  "APGD disagrees": "**no difference detected**"}[case]
    assert expected_a in text and expected_b in text
    assert text.count("\n| ") == 2 + 6  # header, rule and one McNemar row per seed
