from __future__ import annotations

from estimators.base import Estimator, HyperStepInputs


class Plain(Estimator):
    """No meta-learning: the hyperparameters stay at their initial values.

    It is the cost unit ("x plain step") and the accuracy floor every meta-learner must beat.
    """

    name = "plain"
    doc = "no meta-learning: hyperparameters frozen at their initial values"

    def hypergradient(self, inputs: HyperStepInputs) -> None:
        return None
