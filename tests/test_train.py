"""The Trainer: loss terms logged apart, reproducibility, data forms, NaN handling, errors."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import make_blobs
from torch.utils.data import DataLoader, TensorDataset

import bbh


def small_bbh():
    return bbh.create("bbh", bbh.models.MLP(2, 4, hidden=(16,)), hidden=(8, 8))


def test_fit_on_a_dataloader_logs_terms_apart_and_beats_chance():
    x, y = make_blobs(n=256)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    method = small_bbh()
    trainer = bbh.Trainer(method, lr=3e-3, epochs=6, kl_anneal=bbh.LinearAnneal(1, 2), progress=False)
    hist = trainer.fit(loader)
    assert len(hist) == 6 and trainer.step == 6 * 8
    assert {"nll", "kl", "kl_weight", "loss", "seconds", "epoch", "step"} <= set(hist[0])
    assert hist[0]["kl_weight"] == 0.0 and hist[-1]["kl_weight"] == 1.0
    with torch.no_grad():
        acc = (method.sample_outputs(x, 20).softmax(-1).mean(0).argmax(-1) == y).float().mean()
    assert acc > 0.9  # chance is 0.25


def test_same_seed_same_result():
    x, y = make_blobs(n=64)

    def run():
        torch.manual_seed(1)
        method = small_bbh()
        bbh.Trainer(method, steps=5, seed=7, progress=False).fit((x, y))
        return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    assert torch.equal(run(), run())


def test_steps_stop_inside_an_epoch():
    x, y = make_blobs(n=64)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = bbh.Trainer(bbh.create("map", bbh.models.MLP(2, 4)), steps=3, progress=False)
    hist = trainer.fit(loader)
    assert trainer.step == 3 and len(hist) == 1


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_parameters():
    x, y = make_blobs(n=64)
    method = small_bbh()
    trainer = bbh.Trainer(method, steps=2, progress=False)
    trainer.fit((x, y))
    before = [p.detach().clone() for p in method.trainable_parameters()]
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(bbh.NonFiniteLossError, match="non-finite value at step 0: x holds 1 non-finite value"):
        bbh.Trainer(method, steps=1, progress=False).fit((bad, y))  # bad data: refused before the forward
    after = list(method.trainable_parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_nan_loss_with_finite_data_blames_the_optimisation():
    class Overflow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 4)

        def forward(self, x):
            return self.lin(x) * float("inf")  # inf logits: a NaN loss from finite data

    x, y = make_blobs(n=64)
    method = bbh.create("map", Overflow())
    before = [p.detach().clone() for p in method.trainable_parameters()]
    with pytest.raises(bbh.NonFiniteLossError, match="non-finite loss at step 0: .*nll=nan.*finite data: lower the "
                                                     "learning rate"):
        bbh.Trainer(method, steps=1, progress=False).fit((x, y))
    assert all(torch.equal(a, b) for a, b in zip(before, method.trainable_parameters()))


def test_trainer_input_errors():
    method = bbh.create("map", bbh.models.MLP(2, 4))
    x, y = make_blobs(n=16)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; expected one of 'adam', 'rmsprop-tf'"):
        bbh.Trainer(method, optimizer="sgd")
    with pytest.raises(ValueError, match="different numbers of examples: 16 vs 15"):
        bbh.Trainer(method, progress=False).fit((x, y[:15]))
    with pytest.raises(ValueError, match="num_data"):
        bbh.Trainer(method, progress=False).fit([(x, y)])
    with pytest.raises(ValueError, match="no batches"):
        bbh.Trainer(method, progress=False).fit([], num_data=10)
    with pytest.raises(TypeError, match="bbh Method"):
        bbh.Trainer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        bbh.Trainer(method, epochs=0)


def test_rmsprop_tf_trains_bbh():
    x, y = make_blobs(n=128)
    method = small_bbh()
    hist = bbh.Trainer(method, optimizer="rmsprop-tf", lr=1e-3, steps=150, kl_anneal=0.0,
                       progress=False).fit((x, y))
    assert hist[-1]["nll"] < 0.5 * hist[0]["nll"]


def test_map_penalty_is_the_gaussian_log_prior_over_kernels():
    model = bbh.models.MLP(2, 3, hidden=(4,))
    method = bbh.create("map", model, prior_scale=2.0)
    expected = sum((model.net[i].weight ** 2).sum() for i in (0, 2)) / (2 * 4.0)
    assert torch.allclose(method.penalty(), expected)
    x, y = make_blobs(n=8, classes=3)
    terms = method.loss(x, y, num_data=100)
    assert torch.allclose(terms.total, terms.nll + expected / 100)
    assert float(bbh.create("map", model, prior_scale=None).penalty()) == 0.0


def test_default_learning_rates_follow_the_method():
    bbh_method = small_bbh()
    assert bbh.Trainer(bbh_method, progress=False).optimizer.param_groups[0]["lr"] == 2e-5  # measured: 1e-4 unstable
    assert bbh.Trainer(bbh_method, optimizer="rmsprop-tf", progress=False).optimizer.param_groups[0]["lr"] == 1e-4
    map_method = bbh.create("map", bbh.models.MLP(2, 4))
    assert bbh.Trainer(map_method, progress=False).optimizer.param_groups[0]["lr"] == 1e-3
    assert bbh.Trainer(map_method, lr=0.05, progress=False).optimizer.param_groups[0]["lr"] == 0.05


# ---- the loop the library owns: checkpoints, exact resume, clipping, training accuracy ----------------------
def _augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A little input noise drawn from the Trainer's augmentation generator (so that its state matters)."""
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def _state(method: bbh.Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}


def _fresh_bbh() -> bbh.Method:
    torch.manual_seed(5)
    return small_bbh()


def _fit(method: bbh.Method, data, checkpoint_dir=None, callbacks=(), **fit_kwargs) -> bbh.Trainer:
    trainer = bbh.Trainer(method, lr=3e-3, epochs=3, seed=11, kl_anneal=bbh.LinearAnneal(1, 1), progress=False,
                          checkpoint_dir=checkpoint_dir, callbacks=callbacks)
    trainer.fit(data, **fit_kwargs)
    return trainer


@pytest.mark.parametrize("form, stop", [("tensors", "callback"), ("tensors", "sigterm"), ("loader", "callback")])
def test_library_checkpoint_and_resume_continue_bit_exactly(tmp_path, form, stop):
    import os
    import signal

    x, y = make_blobs(n=72)
    if form == "tensors":  # the Trainer shuffles (72 // 16 = 4 steps per epoch) and augments
        data, fit_kwargs = (x, y), {"batch_size": 16, "transform": _augment}
    else:  # a shuffling DataLoader draws its order from torch's global generator when the epoch begins
        data, fit_kwargs = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), {}
    reference = _fit(_fresh_bbh(), data, **fit_kwargs)

    def interrupt(record):
        if record["event"] == "step" and (record["epoch"], record["step_in_epoch"]) == (1, 2):  # mid-epoch
            if stop == "callback":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # deferred to the end of the step, then checkpointed

    with pytest.raises(KeyboardInterrupt, match="epoch 1, step 2; checkpoint written to"):
        _fit(_fresh_bbh(), data, tmp_path / "run", callbacks=[interrupt], **fit_kwargs)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the Trainer's handlers are gone
    torch.manual_seed(123)  # whatever happens between the interruption and the resume does not matter
    method = _fresh_bbh()
    resumed = bbh.Trainer.resume(tmp_path / "run", method, progress=False)
    per_epoch = 4 if form == "tensors" else 5  # the loader keeps the last, smaller batch
    assert (resumed.epoch, resumed.step_in_epoch, resumed.step) == (1, 2, per_epoch + 2)
    resumed.fit(data, **fit_kwargs)
    assert resumed.step == reference.step == 3 * per_epoch
    a, b = _state(reference.method), _state(method)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["nll"] for r in resumed.history] == pytest.approx([r["nll"] for r in reference.history])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2] and lines[-1]["step"] == resumed.step


def test_resume_refuses_other_data_and_resuming_a_finished_run_trains_no_more(tmp_path):
    x, y = make_blobs(n=64)
    trainer = _fit(_fresh_bbh(), (x, y), tmp_path / "run", batch_size=16)
    done = _state(trainer.method)
    method = _fresh_bbh()
    with pytest.raises(ValueError, match="batch_size 32 .checkpoint: 16."):
        bbh.Trainer.resume(tmp_path / "run", method, progress=False).fit((x, y), batch_size=32)
    again = bbh.Trainer.resume(tmp_path / "run", method, progress=False)
    again.fit((x, y), batch_size=16)
    assert again.step == trainer.step and all(torch.equal(v, _state(method)[k]) for k, v in done.items())
    more = bbh.Trainer.resume(tmp_path / "run", method, progress=False, epochs=4)  # raise epochs: train on
    more.fit((x, y), batch_size=16)
    assert more.step == trainer.step + 4 and len(more.history) == 4
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        bbh.Trainer.resume(tmp_path / "nothing", method)
    with pytest.raises(ValueError, match="holds a 'bbh' method, not 'map'"):
        bbh.Trainer.resume(tmp_path / "run", bbh.create("map", bbh.models.MLP(2, 4)))


def test_checkpoint_holds_only_tensors_and_plain_containers(tmp_path):
    x, y = make_blobs(n=64)
    trainer = bbh.Trainer(small_bbh(), epochs=2, amp=True, clip_grad_norm=5.0, kl_anneal=bbh.LinearAnneal(1, 1),
                          checkpoint_dir=tmp_path, progress=False, metadata={"note": "plain data", "n": [1, 2]})
    trainer.fit((x, y), batch_size=32, transform=_augment)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no code runs, nothing custom inside
    assert state["format"] == "bbh.Trainer" and (state["epoch"], state["step_in_epoch"], state["step"]) == (2, 0, 4)
    assert state["settings"]["kl_anneal"] == {"kind": "linear", "start": 1.0, "length": 1.0, "unit": "epoch"}
    assert state["settings"]["clip_grad_norm"] == 5.0 and state["metadata"] == {"note": "plain data", "n": [1, 2]}
    assert set(state["rng"][0]) == {"torch", "augment", "cuda", "python", "numpy"}
    assert state["optimizer"]["state"] and len(state["history"]) == 2 and "grad_norm" in state["history"][0]
    allowed = (torch.Tensor, dict, list, tuple, str, int, float, bool, type(None))

    def walk(obj):
        assert isinstance(obj, allowed), type(obj)
        if isinstance(obj, dict):
            assert all(isinstance(k, (str, int)) for k in obj)
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(state)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*checkpoint\.pt"):
        bbh.Trainer.resume(tmp_path, small_bbh())


@pytest.mark.parametrize("factored", [True, False])
def test_clipping_logs_the_true_norm_and_clips_factored_gradients(factored):
    x, y = make_blobs(n=64)
    torch.manual_seed(2)
    method = small_bbh()
    dense = copy.deepcopy(method)
    seen = []
    trainer = bbh.Trainer(method, steps=1, seed=4, lr=1e-2, clip_grad_norm=0.1, factored_grads=factored,
                          kl_anneal=0.5, progress=False, callbacks=[seen.append])
    assert trainer.uses_factored_grads == factored
    trainer.fit((x, y))
    # the same step with a plain dense backward and torch's clipping
    torch.manual_seed(4)
    dense.train()
    dense.loss(x, y, num_data=64, kl_weight=0.5).total.backward()
    params = dense.trainable_parameters()
    expected = float(torch.nn.utils.clip_grad_norm_(params, 0.1))
    assert expected > 1.0  # clipping is active
    assert seen[0]["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert trainer.history[0]["grad_norm"] == pytest.approx(expected, rel=1e-5)
    reference = torch.optim.Adam(params, lr=1e-2)
    reference.step()
    for a, b in zip(params, method.trainable_parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-6)


def test_train_acc_comes_from_the_loss_terms_outputs():
    class HalfRight(bbh.MAP):
        """Reports outputs that are right on the first half of every batch, wrong on the rest."""

        def loss(self, x, y, *, num_data, kl_weight=1.0):
            terms = super().loss(x, y, num_data=num_data, kl_weight=kl_weight)
            fake = torch.nn.functional.one_hot(y, 4).float()
            fake[y.shape[0] // 2:] = torch.nn.functional.one_hot((y[y.shape[0] // 2:] + 1) % 4, 4).float()
            self._last_outputs = torch.zeros_like(fake)  # a private attribute the Trainer must not read
            return dataclasses.replace(terms, outputs=fake)

    x, y = make_blobs(n=64)
    seen = []
    trainer = bbh.Trainer(HalfRight(bbh.models.MLP(2, 4)), epochs=2, progress=False, callbacks=[seen.append])
    history = trainer.fit((x, y), batch_size=16)
    assert all(r["train_acc"] == 0.5 for r in seen if r["event"] == "step") and len(seen) == 2 * 4 + 2
    assert [r["train_acc"] for r in history] == [0.5, 0.5]
    assert [r["event"] for r in seen[:5]] == ["step"] * 4 + ["epoch"]
    # regression (float targets): no training accuracy
    reg = bbh.create("map", bbh.models.MLP(2, 1), likelihood=bbh.likelihoods.Gaussian(1.0))
    hist = bbh.Trainer(reg, steps=2, progress=False).fit((x, x[:, :1]))
    assert "train_acc" not in hist[0] and "nll" in hist[0]


def test_minibatches_of_a_tensor_pair_are_a_function_of_seed_and_epoch():
    x = torch.arange(20.0).unsqueeze(1)
    y = torch.zeros(20, dtype=torch.long)
    seen: list[list[int]] = []

    class Spy(bbh.MAP):
        def loss(self, x, y, *, num_data, kl_weight=1.0):
            seen.append(x[:, 0].long().tolist())
            return super().loss(x, y, num_data=num_data, kl_weight=kl_weight)

    def batches(seed, shuffle=True, drop_last=True):
        seen.clear()
        bbh.Trainer(Spy(bbh.models.MLP(1, 2)), epochs=2, seed=seed, progress=False).fit(
            (x, y), batch_size=6, shuffle=shuffle, drop_last=drop_last)
        return [list(b) for b in seen]

    a = batches(1)
    assert len(a) == 6 and all(len(b) == 6 for b in a) and a == batches(1) and a != batches(2)
    assert sorted(sum(a[:3], [])) != list(range(18)) or a[:3] != a[3:]  # epochs are reshuffled
    assert batches(1, shuffle=False)[:4] == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)),
                                             list(range(0, 6))]
    assert [len(b) for b in batches(1, drop_last=False)] == [6, 6, 6, 2] * 2
    with pytest.raises(ValueError, match="batch_size 30 exceeds the 20 training examples"):
        bbh.Trainer(bbh.create("map", bbh.models.MLP(1, 2)), progress=False).fit((x, y), batch_size=30)
    with pytest.raises(ValueError, match="batch_size applies to an"):
        bbh.Trainer(bbh.create("map", bbh.models.MLP(1, 2)), progress=False).fit(
            DataLoader(TensorDataset(x, y), batch_size=4), batch_size=4)


def test_nan_with_a_checkpoint_dir_keeps_the_last_good_checkpoint(tmp_path):
    x, y = make_blobs(n=64)
    method = bbh.create("map", bbh.models.MLP(2, 4))

    def poison(xb, generator=None):
        poison.calls += 1
        return xb * float("nan") if poison.calls > 6 else xb  # 4 steps per epoch: NaN in epoch 1, step 2

    poison.calls = 0
    with pytest.raises(bbh.NonFiniteLossError, match="non-finite value at step 6: x holds"):
        bbh.Trainer(method, epochs=3, checkpoint_dir=tmp_path, progress=False).fit((x, y), batch_size=16,
                                                                                    transform=poison)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (1, 0, 4)
    assert all(torch.isfinite(p).all() for p in method.trainable_parameters())


def test_a_gradient_scaler_falls_back_to_dense_gradients_and_is_checkpointed(tmp_path):
    # CUDA AMP's GradScaler, here on the CPU: it only sees .grad, so the Trainer must not hand it factors
    x, y = make_blobs(n=64)

    def run(scaled: bool):
        torch.manual_seed(3)
        method = small_bbh()
        trainer = bbh.Trainer(method, epochs=2, seed=1, lr=1e-2, clip_grad_norm=1.0, progress=False,
                              checkpoint_dir=tmp_path / str(scaled), factored_grads=scaled)
        if scaled:  # factored_grads=True asked for, but a scaler forces dense gradients
            trainer.scaler = torch.amp.GradScaler("cpu")
            assert not trainer.uses_factored_grads
        trainer.fit((x, y), batch_size=32)
        return trainer

    plain, scaled = run(False), run(True)
    for a, b in zip(plain.method.trainable_parameters(), scaled.method.trainable_parameters()):
        assert torch.equal(a, b)  # scaling by 2^16 and back is exact: the same dense updates, bit for bit
    state = torch.load(tmp_path / "True" / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] == 65536.0 and state["scaler"]["_growth_tracker"] == 4


# ---- the learning-rate schedule ------------------------------------------------------------------------------
def test_cosine_schedule_follows_the_formula_over_the_planned_steps():
    import math

    x, y = make_blobs(n=64)
    seen: list[float] = []
    trainer = bbh.Trainer(small_bbh(), lr=3e-3, lr_schedule="cosine", epochs=3, progress=False,
                          callbacks=[lambda r: seen.append(r["lr"]) if r["event"] == "step" else None])
    trainer.fit((x, y), batch_size=16)  # 4 steps per epoch: T = 12
    assert seen == pytest.approx([3e-3 * (1 + math.cos(math.pi * t / 12)) / 2 for t in range(12)])
    assert seen[0] == 3e-3 and seen[-1] < 3e-3 * 0.02
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(seen[-1])
    assert trainer.history[0]["lr"] == pytest.approx(sum(seen[:4]) / 4)  # the epoch's mean
    steps = bbh.Trainer(small_bbh(), lr=1e-3, lr_schedule="cosine", epochs=5, steps=6, progress=False)
    assert steps.planned_steps(4) == 6 and steps.planned_steps(1) == 5  # the smaller of epochs x S and steps
    constant = bbh.Trainer(small_bbh(), lr=3e-3, epochs=1, progress=False)
    constant.fit((x, y), batch_size=16)
    assert "lr" not in constant.history[0] and constant.optimizer.param_groups[0]["lr"] == 3e-3


def test_cosine_schedule_resumes_exactly_and_needs_a_known_length(tmp_path):
    x, y = make_blobs(n=72)

    def fit(checkpoint_dir=None, callbacks=()):
        trainer = bbh.Trainer(_fresh_bbh(), lr=3e-3, lr_schedule="cosine", epochs=3, seed=11, progress=False,
                              checkpoint_dir=checkpoint_dir, callbacks=callbacks)
        trainer.fit((x, y), batch_size=16)
        return trainer

    reference = fit()

    def interrupt(record):
        if record["event"] == "step" and (record["epoch"], record["step_in_epoch"]) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "run", [interrupt])
    method = _fresh_bbh()
    resumed = bbh.Trainer.resume(tmp_path / "run", method, progress=False)
    assert resumed.lr_schedule == bbh.options.LRSchedule.COSINE  # stored in the checkpoint's settings
    resumed.fit((x, y), batch_size=16)
    a, b = _state(reference.method), _state(method)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in reference.history])

    endless = (batch for batch in [(x, y)])  # a generator: no length, so T is unknown
    with pytest.raises(ValueError, match="lr_schedule='cosine' needs the number of steps"):
        bbh.Trainer(small_bbh(), lr_schedule="cosine", epochs=1, progress=False).fit(endless, num_data=72)
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'; expected one of 'constant', 'cosine'"):
        bbh.Trainer(small_bbh(), lr_schedule="step")
