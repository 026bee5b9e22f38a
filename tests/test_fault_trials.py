"""kill -9 at seeded progress points of a tiny training run, search, AutoAttack run and sharded evaluation;
each resumed to the end must equal the uninterrupted run bitwise (one trial per kind here;
``python -m tests.fault_trials --trials 10`` runs the full set)."""

from __future__ import annotations

import pytest

from . import fault_trials


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return root, fault_trials.make_data(root)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "search", "autoattack", "eval"])
def test_killed_runs_resume_to_the_uninterrupted_result(kind, data):
    root, folder = data
    expected, duration = fault_trials.reference(kind, root, folder)
    row = fault_trials.trial(kind, 0, root, folder, expected, duration, max_kills=2)
    assert row["kills_at_s"], row
    assert row["equal"], row
