"""AutoAttack (Croce & Hein, ICML 2020), built in-tree: APGD-CE / APGD-DLR / APGD-T, FAB / FAB-T, Square,
and the worst-case cascade with resumable state.

    from robnets.attacks.autoattack import AutoAttack
    aa = AutoAttack(model, norm='Linf', eps=8/255, version='standard', seed=0)
    x_adv = aa.run_standard_evaluation(x, y, bs=250, state_path='aa_state.json')
    aa.robust_accuracy, aa.robust_accuracy_history

The single attacks follow the project's attack shape, ``attack(x, y) -> x_adv`` (ε-ball, [0, 1], eval mode,
modes restored, detached, input dtype/device), and take ``sample_ids=`` to make each image's random draws
independent of its batch.
"""

from .apgd import APGD, APGDT
from .autoattack import ATTACKS, VERSIONS, AutoAttack
from .fab import FAB, project_onto_hyperplane_in_box
from .square import Square
from .state import EvaluationState

__all__ = ["APGD", "APGDT", "FAB", "Square", "AutoAttack", "EvaluationState", "ATTACKS", "VERSIONS",
           "project_onto_hyperplane_in_box"]
