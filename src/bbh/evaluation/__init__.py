"""bbh.evaluation: metrics, the posterior predictive, adversarial attacks, probes, and :func:`evaluate`.

* :mod:`~bbh.evaluation.metrics` — pure metric functions on probabilities (error, NLL, Brier, ECE, entropy,
  the paper's entropy AUC, OOD detection);
* :mod:`~bbh.evaluation.predictive` — :class:`Predictive` and the streamed posterior predictive;
* :mod:`~bbh.evaluation.attacks` — FGSM (the authors' and on the expected loss) and PGD;
* :mod:`~bbh.evaluation.api` — :func:`evaluate`, all of the above on a test set, OOD sets and attacks,
  returned as :class:`EvaluationResults`.
"""

from .api import (
    AttackCurve,
    AttackPoint,
    AttackSpec,
    EvaluationResults,
    OODResults,
    SetMetrics,
    evaluate,
)
from .predictive import Predictive, RegressionPredictive, predict, predict_batches

__all__ = ["AttackCurve", "AttackPoint", "AttackSpec", "EvaluationResults", "OODResults", "Predictive",
           "RegressionPredictive", "SetMetrics", "evaluate", "predict", "predict_batches"]
