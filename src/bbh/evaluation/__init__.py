"""bbh.evaluation: trained methods on test sets, outliers and attacks, and :func:`evaluate`.

The metrics and the posterior predictive it computes with are pure tensor code in :mod:`bbh.core`
(``bbh.evaluation.metrics`` and ``bbh.evaluation.predictive`` name those modules):

* :mod:`~bbh.core.metrics` — pure metric functions on probabilities (error, NLL, Brier, ECE, entropy,
  the paper's entropy AUC, OOD detection);
* :mod:`~bbh.core.predictive` — :class:`Predictive` and the streamed posterior predictive;
* :mod:`~bbh.evaluation.attacks` — FGSM (the authors' and on the expected loss) and PGD;
* :mod:`~bbh.evaluation.api` — :func:`evaluate`, all of the above on a test set, OOD sets and attacks,
  returned as :class:`EvaluationResults`.
"""

from ..core import metrics, predictive
from ..core.predictive import Predictive, RegressionPredictive, predict, predict_batches
from .api import (
    AttackCurve,
    AttackPoint,
    AttackSpec,
    EvaluationResults,
    OODResults,
    SetMetrics,
    evaluate,
)

__all__ = ["AttackCurve", "AttackPoint", "AttackSpec", "EvaluationResults", "OODResults", "Predictive",
           "RegressionPredictive", "SetMetrics", "evaluate", "metrics", "predict", "predict_batches", "predictive"]
