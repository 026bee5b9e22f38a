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
