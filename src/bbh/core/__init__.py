"""bbh.core: the bottom layer, plain tensor code that every other package uses and that imports none of them.

* :mod:`~bbh.core.options` — the string options as enums, and the argument checks;
* :mod:`~bbh.core.io` — atomic writes, JSON, the one cache folder;
* :mod:`~bbh.core.threads` — how many torch threads a job gets;
* :mod:`~bbh.core.priors` — weight priors;
* :mod:`~bbh.core.elbo` — the objective, mean NLL + kl_weight(t) · KL / N, and the KL schedules;
* :mod:`~bbh.core.functional` — running a module under sampled weights;
* :mod:`~bbh.core.likelihoods` — p(y | f(x)): categorical, Gaussian (fixed or learned σ), heteroscedastic;
* :mod:`~bbh.core.metrics` — metrics on predictive probabilities and densities;
* :mod:`~bbh.core.predictive` — the posterior predictive of S draws (:class:`Predictive`,
  :class:`RegressionPredictive`) and its streamed form.

The public names ``bbh.elbo``, ``bbh.likelihoods``, ``bbh.priors``, ``bbh.threads``, ``bbh.options``, ``bbh.io``,
``bbh.functional``, ``bbh.evaluation.metrics`` and ``bbh.evaluation.predictive`` are these modules.
"""
