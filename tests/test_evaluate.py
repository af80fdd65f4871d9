"""The posterior predictive, ``bbh evaluate`` and ``bbh compare`` on a tiny finished run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fake_task import FakeTask, fake_config

import bbh
from bbh.core.predictive import Predictive, predict, predict_batches
from bbh.experiments.run import Run
from bbh.reports.runs import compare_runs, evaluate_run, load_run


def test_predictive_decomposition_by_hand():
    p = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])  # S=2, B=2, K=2
    pred = Predictive(p)
    torch.testing.assert_close(pred.mean, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    h_mean = math.log(2)
    h_sample = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(pred.entropy, torch.tensor([h_mean, h_mean]))
    torch.testing.assert_close(pred.expected_entropy, torch.tensor([h_sample, h_mean]))
    # disagreeing samples: epistemic; agreeing uniform samples: purely aleatoric
    torch.testing.assert_close(pred.mutual_information, torch.tensor([h_mean - h_sample, 0.0]))
    with pytest.raises(ValueError, match=r"\[S, B, K\]"):
        Predictive(torch.rand(3, 4))


@pytest.mark.parametrize("name, options, draws", [("map", {}, 1), ("ensemble", {"members": 3}, 3),
                                                  ("mc-dropout", {"sites": ["net.1"]}, 7),
                                                  ("bbh", {"hidden": (8,)}, 7)])
def test_method_predict_shapes_and_chunks(name, options, draws):
    method = bbh.create(name, bbh.models.MLP(4, 3, hidden=(16,)), **options)
    x = torch.randn(5, 4)
    pred = method.predict(x, n_samples=7, chunk_size=3)
    assert pred.sample_probs.shape == (draws, 5, 3)
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(5))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(5)), batch_size=2)
    streamed = predict_batches(method, loader, n_samples=7)  # (x, y) batches stream; only summaries kept
    assert streamed["mean"].shape == (5, 3) and streamed["mutual_information"].shape == (5,)
    if draws == 1:
        assert torch.all(pred.mutual_information == 0)
    assert predict(method, x, 2).sample_probs.shape[0] == (2 if draws == 7 else draws)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, options in (("map", {}), ("bbh", {"hidden": [8]})):
        Run(fake_config(name, epochs=4, **options), root / name, task=FakeTask(), progress=False).train()
    return root


def test_evaluate_writes_results_report_and_figures(finished_runs):
    task = FakeTask()
    r = evaluate_run(finished_runs / "bbh", task=task, n_samples=10, adv_images=16, pgd=True, progress=False)
    out = finished_runs / "bbh" / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"]["error_percent"] == pytest.approx(r["test"]["error_percent"])
    for key in ("error_percent", "nll", "brier", "ece", "entropy_auc", "mean_mutual_information"):
        assert math.isfinite(saved["test"][key]), key
    assert set(saved["ood"]) == {"entropy", "mutual_information", "max_prob"}
    assert 0 <= saved["ood"]["entropy"]["auroc"] <= 1
    fgsm = saved["adversarial"]["fgsm"]
    assert [row["epsilon"] for row in fgsm] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    assert fgsm[-1]["accuracy"] <= fgsm[0]["accuracy"]
    assert len(saved["adversarial"]["pgd"]) == 9
    for png in ("entropy_cdf.png", "reliability.png", "adversarial.png", "weights.png", "correlation.png",
                "weights_std.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (out / "report.md").read_text()
    assert "| test |" in report and "![adversarial](adversarial.png)" in report and "AUROC" in report
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_evaluate_map_has_no_weight_posterior_and_compare_builds_tables(finished_runs, tmp_path):
    r = evaluate_run(finished_runs / "map", task=FakeTask(), n_samples=10, adv_images=16, progress=False)
    assert r["posterior_plots"].startswith("none") and r["samples"] == 1  # MAP has one draw
    assert "1 posterior draw per prediction" in (finished_runs / "map" / "eval" / "report.md").read_text()
    evaluate_run(finished_runs / "bbh", task=FakeTask(), n_samples=10, adversarial=False, progress=False,
                 posterior_plots=False)
    text = compare_runs([finished_runs / "map", finished_runs / "bbh"], tmp_path)
    assert "fake-map" in text and "fake-bbh" in text
    assert (tmp_path / "compare.csv").read_text().startswith("run,")
    assert (tmp_path / "adversarial.png").exists()


def _strict_json(text: str):
    def reject(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


def test_evaluate_again_leaves_no_stale_figures_and_writes_strict_json(finished_runs):
    run = finished_runs / "bbh"
    evaluate_run(run, task=FakeTask(), n_samples=4, adv_images=8, progress=False)
    out = run / "eval"
    assert (out / "adversarial.png").exists() and (out / "weights.png").exists()
    (out / "stray.txt").write_text("left by hand")
    before = torch.get_rng_state()
    r = evaluate_run(run, task=FakeTask(), n_samples=4, adversarial=False, posterior_plots=False, progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # no global reseeding
    assert sorted(p.name for p in out.iterdir()) == ["entropy_cdf.png", "reliability.png", "report.md",
                                                     "results.json"]
    assert not [p for p in run.iterdir() if p.name.startswith(".eval")]  # no temporary folder left
    saved = _strict_json((out / "results.json").read_text())
    assert saved == r and "adversarial" not in saved and saved["num_classes"] == 3
    conf = saved["test"]["reliability"]["confidence"]
    assert None in conf and all(c is None or 0 <= c <= 1 for c in conf)  # empty bins: null, not NaN
    # the same seed gives the same numbers
    again = evaluate_run(run, task=FakeTask(), n_samples=4, adversarial=False, posterior_plots=False,
                         progress=False)
    assert again == r


def test_load_run_reads_weights_only(finished_runs):
    method, config = load_run(finished_runs / "bbh")
    assert config["experiment"]["method"] == "bbh" and not method.training
    assert method.predict(FakeTask().eval_transform(FakeTask().test_x[:5]), 3).sample_probs.shape == (3, 5, 3)


def test_evaluate_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a bbh run directory"):
        evaluate_run(tmp_path, task=FakeTask())
    (tmp_path / "status.json").write_text('{"status": "interrupted", "epoch": 2}')
    with pytest.raises(FileNotFoundError, match=f"has not finished .*bbh train --resume {tmp_path}"):
        evaluate_run(tmp_path, task=FakeTask())
    with pytest.raises(FileNotFoundError, match="bbh evaluate"):
        compare_runs([tmp_path], tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read"):
        load_run(tmp_path)
