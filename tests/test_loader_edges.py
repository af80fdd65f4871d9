"""The pipeline's edges with real data loaders (issue 25, item 6 a-f).

a. a DataLoader whose sampler covers part of its dataset trains with N = the examples the sampler draws from;
b. a DataLoader over an IterableDataset trains with ``num_data`` and, without it, asks for it in one line;
c. every input check runs before any forward pass: labels out of range, targets that do not fit the outputs
   and a model that cannot run on the batch leave BatchNorm's statistics, ``num_batches_tracked`` and the
   random state as they were;
d. an empty batch is refused before anything;
e. ``likelihood_samples="split"`` checks its smallest part before any part runs;
f. integer targets for a regression likelihood are refused with the conversion to make.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

import bbh

NAMES = ["map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh", "bbh-rank1"]


def make(name: str, model: nn.Module, **options: object) -> bbh.Method:
    extra: dict[str, object] = {"map": {}, "mc-dropout": {"sites": ["2"]}, "ensemble": {"members": 2, "seed": 0},
                                "bbb": {}, "mnf": {}, "bbh": {"hidden": (8,)},
                                "bbh-rank1": {"hidden": (8,), "layout": "rank1"}}[name]
    return bbh.create(name.split("-rank1")[0], model, **extra, **options)


def bn_mlp(inputs: int = 2, outputs: int = 3) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear: BatchNorm needs more than one example per training pass."""
    return nn.Sequential(nn.Linear(inputs, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, outputs))


def conv_bn_net(classes: int = 3) -> nn.Sequential:
    """Conv -> BatchNorm2d -> ReLU -> Flatten -> Linear on [B, 1, 8, 8]: another image size passes BatchNorm,
    then fails at the Linear layer."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes))


def buffers(method: bbh.Method) -> dict[str, torch.Tensor]:
    """Every buffer (BatchNorm running mean / var / num_batches_tracked of the model and of ensemble members)."""
    return {k: v.detach().clone() for k, v in method.named_buffers()}


def assert_untouched(method: bbh.Method, before: dict[str, torch.Tensor], rng: torch.Tensor) -> None:
    after = dict(method.named_buffers())
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"changed by a call that raised: {changed}"
    assert any("num_batches_tracked" in k for k in before)
    assert torch.equal(torch.get_rng_state(), rng), "the random state moved"


def spy_num_data(method: bbh.Method) -> list[int]:
    """Record the N every loss call of the Trainer gets."""
    seen: list[int] = []
    loss = method.loss

    def spy(x: torch.Tensor, y: torch.Tensor, *, num_data: int, kl_weight: float = 1.0) -> bbh.LossTerms:
        seen.append(num_data)
        return loss(x, y, num_data=num_data, kl_weight=kl_weight)

    method.loss = spy  # type: ignore[method-assign]
    return seen


XY = (torch.randn(600, 2), torch.randint(0, 3, (600,)))
DATA = TensorDataset(*XY)


# ----------------------------------------------------------------------------------------------- a. samplers
def test_a_subset_sampler_trains_with_the_subset_size_not_the_dataset_size():
    """1,000 of 60,000 indices in the issue; 100 of 600 here. N = len(dataset) made the KL 6x too weak."""
    method = bbh.create("map", bbh.models.MLP(2, 3, hidden=(8,)))
    seen = spy_num_data(method)
    loader = DataLoader(DATA, batch_size=20, sampler=SubsetRandomSampler(range(100)))
    bbh.Trainer(method, epochs=1, progress=False).fit(loader)
    assert seen == [100] * 5
    seen.clear()
    bbh.Trainer(method, epochs=1, progress=False).fit(loader, num_data=300)  # num_data given: it wins
    assert seen == [300] * 5


def test_a_which_n_each_sampler_gives():
    from bbh.data.batches import training_set_size

    g = torch.Generator().manual_seed(0)
    assert training_set_size(DataLoader(DATA, batch_size=10)) == 600                       # SequentialSampler
    assert training_set_size(DataLoader(DATA, batch_size=10, shuffle=True)) == 600         # RandomSampler
    # an epoch of 50 draws from the whole dataset still trains on all of it
    assert training_set_size(DataLoader(DATA, batch_size=10,
                                        sampler=RandomSampler(DATA, num_samples=50, generator=g))) == 600
    # each rank draws its share; together the ranks see the whole dataset
    assert training_set_size(DataLoader(DATA, batch_size=10,
                                        sampler=DistributedSampler(DATA, num_replicas=2, rank=0))) == 600
    weights = torch.zeros(600)
    weights[:40] = 1.0
    assert training_set_size(DataLoader(DATA, batch_size=10,
                                        sampler=WeightedRandomSampler(weights, 600, generator=g))) == 40
    subset = SubsetRandomSampler(list(range(0, 600, 3)))
    assert training_set_size(DataLoader(DATA, batch_sampler=BatchSampler(subset, 10, drop_last=False))) == 200

    class Buckets:  # a batch sampler of one's own: nothing says which examples it draws
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self) -> int:
            return 2

    with pytest.raises(ValueError, match=r"^the DataLoader's batch sampler \(Buckets\) says nothing of the examples "
                                         r"it draws: pass num_data=N \(the number of training examples\) to fit\(\)$"):
        training_set_size(DataLoader(DATA, batch_sampler=Buckets()))
    with pytest.raises(ValueError, match=r"batch_size=None yields the dataset's items as batches.*pass num_data=N"):
        training_set_size(DataLoader(DATA, batch_size=None))

    class Endless(torch.utils.data.Sampler):  # no length
        def __iter__(self):
            return iter(range(600))

    with pytest.raises(ValueError, match=r"^the DataLoader's sampler \(Endless\) has no length: pass num_data=N"):
        training_set_size(DataLoader(DATA, batch_size=10, sampler=Endless()))


# ------------------------------------------------------------------------------------------ b. IterableDataset
class Stream(IterableDataset):
    """100 examples, one at a time, with no length."""

    def __iter__(self):
        x, y = XY
        return iter(zip(x[:100], y[:100]))


def test_b_an_iterable_dataset_trains_with_num_data_and_asks_for_it_without():
    method = bbh.create("map", bbh.models.MLP(2, 3, hidden=(8,)))
    seen = spy_num_data(method)
    history = bbh.Trainer(method, epochs=2, progress=False).fit(DataLoader(Stream(), batch_size=25), num_data=100)
    assert [h["epoch"] for h in history] == [0, 1] and seen == [100] * 8
    with pytest.raises(ValueError, match=r"^a DataLoader over an IterableDataset \(Stream\) has no length: pass "
                                         r"num_data=N \(the number of training examples\) to fit\(\)$"):
        bbh.Trainer(method, epochs=1, progress=False).fit(DataLoader(Stream(), batch_size=25))


# ------------------------------------------------------------------------------- c. checks before the forward
@pytest.mark.parametrize("name", NAMES)
def test_c_bad_targets_and_batches_leave_batchnorm_and_the_random_state_untouched(name):
    """Labels out of range were refused only after the forward pass had moved BatchNorm's statistics."""
    method = make(name, conv_bn_net(3))
    method.train()
    x, x10 = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 10, 10)
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 3\); found 5$"):
        method.loss(x, torch.tensor([0, 5, 1, 2]), num_data=10)
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 3\); found -1$"):
        method.loss(x, torch.tensor([0, -1, 1, 2]), num_data=10)
    # 10 x 10 images pass the convolution and BatchNorm, then cannot enter the Linear layer
    with pytest.raises(ValueError, match=r"^Sequential cannot run on a batch of shape \[4, 1, 10, 10\]: it raised "
                                         r"RuntimeError: .*144.* \(nothing was computed\)$"):
        method.loss(x10, torch.tensor([0, 1, 2, 0]), num_data=10)
    assert_untouched(method, before, rng)
    assert torch.isfinite(method.loss(x, torch.tensor([0, 1, 2, 2]), num_data=10).total)  # then it trains


@pytest.mark.parametrize("name", NAMES)
def test_c_one_example_through_batchnorm_is_refused_in_one_line(name):
    method = make(name, bn_mlp())
    method.train()
    x = torch.rand(1, 2)
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^Sequential cannot run on a batch of shape \[1, 2\]: it raised ValueError: "
                                         r"Expected more than 1 value per channel when training"):
        method.loss(x, torch.tensor([1]), num_data=10)
    assert_untouched(method, before, rng)
    with method.evaluating():  # BatchNorm in eval mode takes one example
        assert method.sample_outputs(torch.rand(1, 2), 2).shape[1:] == (1, 3)


def test_c_regression_targets_of_the_wrong_shape_are_refused_before_the_forward():
    method = bbh.create("bbh", bn_mlp(2, 1), hidden=(8,), likelihood=bbh.likelihoods.Gaussian(1.0))
    hetero = bbh.create("map", bn_mlp(2, 2), likelihood="heteroscedastic")
    x, y = torch.rand(4, 2), torch.rand(4, 2)
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^Gaussian likelihood: targets of shape \(4, 2\) do not match outputs "
                                         r"\(4, 1\) \(expected targets \(4, 1\)\)$"):
        method.loss(x, y, num_data=10)
    with pytest.raises(ValueError, match=r"heteroscedastic likelihood: targets of shape \(4, 2\) do not match"):
        hetero.loss(x, y, num_data=10)
    assert_untouched(method, before, rng)
    assert torch.isfinite(method.loss(torch.rand(4, 2), torch.rand(4, 1), num_data=10).total)


def test_c_the_dry_run_is_made_once_per_kind_of_batch():
    method = bbh.create("map", bn_mlp())
    for _ in range(3):
        method.loss(torch.rand(8, 2), torch.zeros(8, dtype=torch.long), num_data=8)
    method.loss(torch.rand(5, 2), torch.zeros(5, dtype=torch.long), num_data=8)
    assert len(method._outputs_seen) == 2  # batch sizes 8 and 5


# ----------------------------------------------------------------------------------------------- d. empty batch
@pytest.mark.parametrize("name", NAMES)
def test_d_an_empty_batch_is_refused_before_anything(name):
    """It gave a NaN loss after moving BatchNorm's statistics."""
    method = make(name, bn_mlp())
    method.train()
    x = torch.rand(0, 2)
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^the batch is empty \(x has shape \[0, 2\]\): a loss needs at least one "
                                         r"example \(nothing was computed\)$"):
        method.loss(x, torch.zeros(0, dtype=torch.long), num_data=10)
    assert_untouched(method, before, rng)


def test_d_a_loader_yielding_an_empty_batch_stops_the_trainer_with_that_line():
    method = bbh.create("map", bn_mlp())
    batches = [(torch.rand(4, 2), torch.zeros(4, dtype=torch.long)),
               (torch.rand(0, 2), torch.zeros(0, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"^the batch is empty"):
        bbh.Trainer(method, epochs=1, progress=False).fit(batches, num_data=8)


# ----------------------------------------------------------------------------------------------- e. split parts
def test_e_split_checks_its_smallest_part_before_any_part_runs():
    """A batch of 6 in 5 parts: 2, 1, 1, 1, 1. Part 0 used to update BatchNorm, then part 1 raised BatchNorm's
    own error."""
    method = bbh.create("bbh", bn_mlp(), hidden=(8,), likelihood_samples="split", draws_per_step=5)
    method.train()
    x6, x3 = torch.rand(6, 2), torch.rand(3, 2)
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^Sequential cannot run on 1 example, the smallest of the 5 parts "
                                         r"likelihood_samples='split' cuts this batch of 6 into \(batches of 10 or "
                                         r"more give every part 2 examples\): it raised ValueError: Expected more "
                                         r"than 1 value per channel when training"):
        method.loss(x6, torch.zeros(6, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=r"^likelihood_samples='split' cuts the batch into draws_per_step=5 parts; "
                                         r"this batch has 3 examples \(nothing was computed\)$"):
        method.loss(x3, torch.zeros(3, dtype=torch.long), num_data=10)
    assert_untouched(method, before, rng)
    assert torch.isfinite(method.loss(torch.rand(10, 2), torch.zeros(10, dtype=torch.long), num_data=10).total)


def test_e_split_parts_of_one_image_are_fine_where_the_model_takes_them():
    """BatchNorm2d on one 6 x 6 image has 36 values per channel: a part of one example is valid there."""
    method = bbh.create("bbh", conv_bn_net(), hidden=(8,), likelihood_samples="split", draws_per_step=5)
    method.train()
    assert torch.isfinite(method.loss(torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long), num_data=10).total)


# ---------------------------------------------------------------------------------- f. integer regression targets
@pytest.mark.parametrize("likelihood", [bbh.likelihoods.Gaussian(1.0), "gaussian", "heteroscedastic"])
def test_f_integer_regression_targets_are_refused_with_the_conversion(likelihood):
    """Decision: refuse, not convert. Integer targets given to a regression likelihood are more often class
    labels passed with the wrong likelihood than values; the fix is one call, which the message names."""
    outputs = 2 if likelihood == "heteroscedastic" else 1
    method = bbh.create("bbb", bn_mlp(2, outputs), likelihood=likelihood)
    x, y = torch.rand(4, 2), torch.tensor([[1], [2], [3], [4]])
    before, rng = buffers(method), torch.get_rng_state()
    with pytest.raises(ValueError, match=r"likelihood expects floating-point targets, got dtype torch.int64: convert "
                                         r"them with y.float\(\) \(integer targets are not converted silently: class "
                                         r"labels are meant for likelihood='categorical'\)$"):
        method.loss(x, y, num_data=10)
    with pytest.raises(ValueError, match="got dtype torch.bool"):
        method.loss(x, y > 2, num_data=10)
    assert_untouched(method, before, rng)
    assert torch.isfinite(method.loss(x, y.float(), num_data=10).total)  # the advice works


def test_f_the_conversion_follows_a_float64_model():
    method = bbh.create("map", bbh.models.MLP(2, 1, hidden=(8,)), likelihood=bbh.likelihoods.Gaussian(1.0)).double()
    x, y = torch.rand(4, 2, dtype=torch.float64), torch.arange(4).unsqueeze(1)
    with pytest.raises(ValueError, match=r"convert them with y.double\(\)"):
        method.loss(x, y, num_data=10)
    assert method.loss(x, y.double(), num_data=10).total.dtype == torch.float64
    with pytest.raises(ValueError, match="floating-point targets"):  # log_prob itself refuses them too
        bbh.likelihoods.Gaussian(1.0).log_prob(torch.zeros(4, 1), y)
