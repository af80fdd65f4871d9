"""Real-data layer on tiny fake files written by the tests: IDX / CIFAR loaders, tasks, transforms."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import bbh.data.tasks as tasks_mod
from bbh.data import (
    DataFormatError,
    MissingDataError,
    Task,
    available_tasks,
    load_cifar10,
    load_cifar_batch,
    load_mnist,
    load_notmnist,
    load_task,
    read_idx,
    resolve_data_dir,
    split_validation,
)
from bbh.data import transforms as T

# ---- fake files ----------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big")[:3] + bytes([array.ndim])
    return header + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(array, magic))
    return path


def write_idx_pair(folder: Path, prefix: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
    return images, labels


def make_fake_mnist(root: Path, n_train: int = 10, n_test: int = 4, n_outliers: int = 3) -> dict[str, np.ndarray]:
    """``root/mnist`` and ``root/notmnist`` with a handful of random images."""
    out = {}
    out["train_x"], out["train_y"] = write_idx_pair(root / "mnist", "train", n_train, 1)
    out["test_x"], out["test_y"] = write_idx_pair(root / "mnist", "t10k", n_test, 2)
    out["out_x"], out["out_y"] = write_idx_pair(root / "notmnist", "t10k", n_outliers, 3)
    return out


def cifar_batch(labels: list[int], seed: int, *, bytes_keys: bool = True, filenames: bool = True) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    d = {"batch_label": "fake batch", "labels": list(labels), "data": data}
    if filenames:
        d["filenames"] = [f"img_{i}.png" for i in range(len(labels))]
    if bytes_keys:
        d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
        if filenames:
            d[b"filenames"] = [f.encode() for f in d[b"filenames"]]
    return d


def write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def make_fake_cifar(root: Path, per_batch: int = 20, n_test: int = 30) -> dict[str, np.ndarray]:
    """``root/cifar10/cifar-10-batches-py`` with labels cycling through 0..9, without ``filenames``."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        labels = [(j + i) % 10 for j in range(per_batch)]
        b = cifar_batch(labels, seed=i, filenames=False)
        write_pickle(folder / f"data_batch_{i}", b)
        xs.append(b[b"data"])
        ys += labels
    test_labels = [(3 * j) % 10 for j in range(n_test)]
    t = cifar_batch(test_labels, seed=9, bytes_keys=False, filenames=False)
    write_pickle(folder / "test_batch", t, protocol=pickle.HIGHEST_PROTOCOL)
    return {"train_x": np.concatenate(xs).reshape(-1, 3, 32, 32), "train_y": np.array(ys),
            "test_x": t["data"].reshape(-1, 3, 32, 32), "test_y": np.array(test_labels)}


# ---- MNIST / IDX ---------------------------------------------------------------------------------------


def test_mnist_round_trip(tmp_path):
    fake = make_fake_mnist(tmp_path)
    x, y = load_mnist(tmp_path / "mnist", "train")
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10,) and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), fake["train_x"]) and np.array_equal(y.numpy(), fake["train_y"])
    xt, yt = load_mnist(tmp_path / "mnist", "test")
    assert xt.shape == (4, 1, 28, 28) and np.array_equal(yt.numpy(), fake["test_y"])
    xo, yo = load_notmnist(tmp_path / "notmnist")
    assert np.array_equal(xo[:, 0].numpy(), fake["out_x"]) and np.array_equal(yo.numpy(), fake["out_y"])
    with pytest.raises(ValueError, match="train, test"):
        load_mnist(tmp_path / "mnist", "validation")


def _corrupt_cases():
    good = np.zeros((3, 28, 28), np.uint8)
    full = idx_bytes(good, 0x803)
    gz = gzip.compress(full)
    return {
        "not gzip": (full, "not a readable gzip"),
        "truncated gzip": (gz[: len(gz) // 2], "not a readable gzip"),
        "wrong magic": (gzip.compress(idx_bytes(np.zeros(3, np.uint8), 0x801)), "magic number 2049 where 2051"),
        "not idx": (gzip.compress(b"\x12\x34\x56\x78" + full[4:]), "not an unsigned-byte IDX"),
        "too few bytes": (gzip.compress(full[:-100]), "truncated"),
        "trailing bytes": (gzip.compress(full + b"\0"), "trailing bytes"),
        "short header": (gzip.compress(full[:9]), "truncated header"),
        "empty": (gzip.compress(b""), "too short"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_idx_names_file_and_problem(tmp_path, case):
    content, message = _corrupt_cases()[case]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        read_idx(path, 2051)
    assert str(path) in str(info.value)


def test_idx_pair_consistency_errors(tmp_path):
    write_idx_pair(tmp_path, "train", 5, 0)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), 0x801)
    with pytest.raises(DataFormatError, match="4 labels but .* 5 images"):
        load_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8), 0x801)
    with pytest.raises(DataFormatError, match="label 10 outside"):
        load_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 32, 32), np.uint8), 0x803)
    with pytest.raises(DataFormatError, match=r"\(28, 28\)"):
        load_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path, "test")


def test_split_validation_takes_the_first_examples_as_tf():
    x, y = torch.arange(12).view(12, 1), torch.arange(12) % 10
    tx, ty, vx, vy = split_validation(x, y, 5)
    assert vx.flatten().tolist() == [0, 1, 2, 3, 4] and tx.flatten().tolist() == list(range(5, 12))
    assert torch.equal(ty, y[5:]) and torch.equal(vy, y[:5])
    tx, _, vx, _ = split_validation(x, y, 0)
    assert len(tx) == 12 and len(vx) == 0
    with pytest.raises(ValueError, match="0..12"):
        split_validation(x, y, 13)


# ---- CIFAR ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [True, False])
@pytest.mark.parametrize("filenames", [True, False])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batch_round_trip(tmp_path, bytes_keys, filenames, protocol):
    labels = [3, 8, 8, 0, 6, 6, 1]
    b = cifar_batch(labels, 0, bytes_keys=bytes_keys, filenames=filenames)
    data = b[b"data" if bytes_keys else "data"]
    x, y = load_cifar_batch(write_pickle(tmp_path / "data_batch_1", b, protocol))
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == labels
    # rows are the R plane, then G, then B, each 32x32 row-major
    for c in range(3):
        assert np.array_equal(x[:, c].numpy(), data[:, 1024 * c:1024 * (c + 1)].reshape(7, 32, 32))
    assert x[2, 1, 5, 7].item() == data[2, 1024 + 5 * 32 + 7]


def test_cifar_split_concatenates_batches_in_order(tmp_path):
    fake = make_fake_cifar(tmp_path, per_batch=4, n_test=6)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    x, y = load_cifar10(folder, "train")
    assert x.shape == (20, 3, 32, 32) and np.array_equal(x.numpy(), fake["train_x"])
    assert np.array_equal(y.numpy(), fake["train_y"])
    xt, yt = load_cifar10(folder, "test")
    assert np.array_equal(xt.numpy(), fake["test_x"]) and np.array_equal(yt.numpy(), fake["test_y"])
    with pytest.raises(ValueError, match="train, test"):
        load_cifar10(folder, "val")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def _bad_batches():
    good = cifar_batch([1, 2, 3], 0)
    raw = pickle.dumps(good, protocol=2)
    return {
        "truncated": (raw[: len(raw) // 2], "not a readable CIFAR batch"),
        "garbage": (b"this is not a pickle at all", "not a readable CIFAR batch"),
        "empty": (b"", "not a readable CIFAR batch"),
        "not a dict": (pickle.dumps([1, 2, 3]), "holds a list"),
        "no labels": (pickle.dumps({b"data": good[b"data"]}, protocol=2), "missing key.*labels"),
        "wrong row size": (pickle.dumps({b"data": np.zeros((3, 3000), np.uint8), b"labels": [1, 2, 3]}),
                           r"shape \(3, 3000\)"),
        "wrong dtype": (pickle.dumps({b"data": np.zeros((3, 3072), np.float32), b"labels": [1, 2, 3]}),
                        "float32"),
        "label count": (pickle.dumps({b"data": good[b"data"], b"labels": [1, 2]}), "2 labels for 3 images"),
        "label range": (pickle.dumps({b"data": good[b"data"], b"labels": [1, 2, 10]}), "labels outside"),
        "code execution": (pickle.dumps({b"data": _Evil(), b"labels": [1]}), "refusing to load global"),
    }


@pytest.mark.parametrize("case", list(_bad_batches()))
def test_corrupt_cifar_batch_names_file(tmp_path, case):
    content, message = _bad_batches()[case]
    path = tmp_path / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        load_cifar_batch(path)
    assert str(path) in str(info.value)


# ---- tasks ---------------------------------------------------------------------------------------------


def test_mnist_task_split_and_outliers(tmp_path, monkeypatch):
    fake = make_fake_mnist(tmp_path, n_train=10)
    monkeypatch.setattr(tasks_mod, "MNIST_VALIDATION", 3)  # 5,000 of 60,000 in the real task
    task = load_task("mnist", tmp_path, download=False)
    assert isinstance(task, Task) and task.num_classes == 10 and task.input_shape == (1, 28, 28)
    assert np.array_equal(task.val_x[:, 0].numpy(), fake["train_x"][:3])
    assert np.array_equal(task.train_x[:, 0].numpy(), fake["train_x"][3:])
    assert np.array_equal(task.train_y.numpy(), fake["train_y"][3:])
    assert np.array_equal(task.test_y.numpy(), fake["test_y"])
    assert np.array_equal(task.outlier_x[:, 0].numpy(), fake["out_x"])
    full = load_task("mnist", tmp_path, download=False, validation=False)
    assert full.val_x is None and full.val_y is None and len(full.train_x) == 10
    xt = task.eval_transform(task.test_x)
    assert xt.dtype == torch.float32 and xt.shape == (4, 1, 28, 28)
    assert torch.allclose(xt * 255, task.test_x.float())
    assert torch.equal(task.train_transform(task.train_x, torch.Generator().manual_seed(0)),
                       task.eval_transform(task.train_x))  # no augmentation
    assert "train 7" in task.summary() and "validation 3" in task.summary()


def test_mnist_task_for_training_needs_no_notmnist(tmp_path):
    """first contact: training MNIST refused to start without notMNIST, which only evaluation needs."""
    fake = make_fake_mnist(tmp_path, n_train=10)
    for f in (tmp_path / "notmnist").iterdir():
        f.unlink()
    (tmp_path / "notmnist").rmdir()
    task = load_task("mnist", tmp_path, download=False, validation=False, outliers=False)
    assert task.outlier_x is None and task.outlier_y is None
    assert np.array_equal(task.train_x[:, 0].numpy(), fake["train_x"])
    assert "outliers not loaded" in task.summary()
    assert task.to("cpu").outlier_x is None
    with pytest.raises(MissingDataError, match="notmnist"):  # evaluation still needs (and names) it
        load_task("mnist", tmp_path, download=False, validation=False)
    fake_cifar = make_fake_cifar(tmp_path)
    cifar = load_task("cifar5", tmp_path, download=False, outliers=False)
    assert cifar.outlier_x is None and len(cifar.test_x) == int((fake_cifar["test_y"] < 5).sum())


def test_real_mnist_split_sizes_are_55000_5000():
    x, y = torch.zeros(60_000, 1, 1, 1, dtype=torch.uint8), torch.zeros(60_000, dtype=torch.int64)
    tx, _, vx, _ = split_validation(x, y, tasks_mod.MNIST_VALIDATION)
    assert (len(tx), len(vx)) == (55_000, 5_000)


@pytest.mark.parametrize("preprocessing,size", [("paper", 24), ("standard", 32)])
def test_cifar5_task(tmp_path, preprocessing, size):
    fake = make_fake_cifar(tmp_path)
    task = load_task("cifar5", tmp_path, download=False, preprocessing=preprocessing)
    assert task.num_classes == 5 and task.input_shape == (3, size, size) and task.val_x is None
    keep = fake["train_y"] < 5
    assert np.array_equal(task.train_x.numpy(), fake["train_x"][keep])
    assert np.array_equal(task.train_y.numpy(), fake["train_y"][keep])
    assert len(task.train_x) == 50 and set(task.train_y.tolist()) == set(range(5))
    test_keep = fake["test_y"] < 5
    assert np.array_equal(task.test_x.numpy(), fake["test_x"][test_keep])
    assert np.array_equal(task.outlier_x.numpy(), fake["test_x"][~test_keep])
    assert set(task.outlier_y.tolist()) == set(range(5, 10))
    assert len(task.test_x) + len(task.outlier_x) == 30
    g = torch.Generator().manual_seed(0)
    assert task.train_transform(task.train_x[:8], g).shape == (8, 3, size, size)
    assert task.eval_transform(task.test_x).shape == (len(task.test_x), 3, size, size)
    moved = task.to("cpu")
    assert torch.equal(moved.train_x, task.train_x) and moved.val_x is None


def test_task_and_preprocessing_names(tmp_path):
    assert available_tasks() == ("mnist", "cifar5", "cifar10")
    with pytest.raises(ValueError, match="mnist, cifar5, cifar10"):
        load_task("cifar100", tmp_path)
    with pytest.raises(ValueError, match="paper, standard"):
        load_task("cifar5", tmp_path, preprocessing="tf")


def test_missing_files_without_download(tmp_path):
    make_fake_mnist(tmp_path)
    (tmp_path / "notmnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingDataError) as info:
        load_task("mnist", tmp_path, download=False)
    msg = str(info.value)
    assert f"in {tmp_path}: notmnist/ lacks t10k-labels-idx1-ubyte.gz;" in msg and "\n" not in msg  # one line
    assert "train-images" not in msg  # MNIST itself is complete
    assert "download=True (or --download) fetches them" in msg
    with pytest.raises(MissingDataError, match="cifar-10-python.tar.gz"):
        load_task("cifar5", tmp_path, download=False)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBH_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("BBH_DATA_DIR")
    assert resolve_data_dir() == tmp_path / "xdg" / "bbh" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "bbh" / "data"
    assert not (tmp_path / "home").exists()  # nothing is created


# ---- transforms ----------------------------------------------------------------------------------------


def _images(n=16, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_output_shapes_and_dtypes():
    x = _images()
    g = torch.Generator().manual_seed(0)
    for fn, size in ((T.cifar_paper_train, 24), (T.cifar_standard_train, 32)):
        out = fn(x, generator=g)
        assert out.shape == (16, 3, size, size) and out.dtype == torch.float32
    assert T.cifar_paper_eval(x).shape == (16, 3, 24, 24)
    assert T.cifar_standard_eval(x).shape == (16, 3, 32, 32)
    m = T.mnist_eval(torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8))
    assert m.dtype == torch.float32 and m.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2])


def test_per_image_standardisation():
    x = _images(8).float() * torch.linspace(0.1, 1, 8)[:, None, None, None]
    z = T.per_image_standardize(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3), correction=0), torch.ones(8), atol=1e-4)
    # constant image: std 0 is replaced by 1/sqrt(numel), giving zeros rather than NaN
    c = torch.full((2, 3, 24, 24), 7.0)
    assert torch.equal(T.per_image_standardize(c), torch.zeros_like(c))
    # TF: tiny std is clamped at 1/sqrt(1728)
    tiny = torch.zeros(1, 3, 24, 24)
    tiny[0, 0, 0, 0] = 1e-3
    expected = (tiny - tiny.mean()) * (1728 ** 0.5)
    assert torch.allclose(T.per_image_standardize(tiny), expected)


def test_paper_eval_is_central_crop_standardised_and_deterministic():
    x = _images()
    out = T.cifar_paper_eval(x)
    assert torch.equal(out, T.cifar_paper_eval(x))
    crop = x[:, :, 4:28, 4:28].float()
    mean = crop.mean(dim=(1, 2, 3), keepdim=True)
    std = crop.std(dim=(1, 2, 3), keepdim=True, correction=0)
    assert torch.allclose(out, (crop - mean) / std, atol=1e-5)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(16), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2, 3), correction=0), torch.ones(16), atol=1e-4)


@pytest.mark.parametrize("fn", [T.cifar_paper_train, T.cifar_standard_train])
def test_train_is_random_but_reproducible(fn):
    x = _images()
    a = fn(x, generator=torch.Generator().manual_seed(1))
    b = fn(x, generator=torch.Generator().manual_seed(1))
    c = fn(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = fn(x)
    torch.manual_seed(5)
    assert torch.equal(d, fn(x))  # the global RNG when no generator is given


def test_paper_train_is_the_tf_sequence():
    """crop/flip, then brightness, then contrast, then standardisation, from one generator in that order."""
    x = _images()
    out = T.cifar_paper_train(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    y = T.random_crop_flip(x.float(), 24, pad=2, generator=g)
    y = T.random_brightness(y, 63.0, g)
    y = T.random_contrast(y, 0.2, 1.8, g)
    assert torch.allclose(out, T.per_image_standardize(y))
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(16), atol=1e-4)
    assert torch.allclose(out.std(dim=(1, 2, 3), correction=0), torch.ones(16), atol=1e-3)


def test_crops_and_flips_happen_and_are_real_crops():
    n, pad, size = 400, 2, 24
    h = torch.arange(32.0)
    img = (1 + h[:, None] * 100 + h[None, :]).expand(3, 32, 32)  # every pixel unique, none zero
    x = img.expand(n, 3, 32, 32).contiguous()
    out = T.random_crop_flip(x, size, pad=pad, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(img, (pad,) * 4)
    cands = torch.stack([padded[:, t:t + size, s:s + size] for t in range(13) for s in range(13)])
    cands = torch.cat([cands, cands.flip(-1)])  # [2 * 169, 3, 24, 24]
    match = (out[:, None] == cands[None]).flatten(2).all(-1)  # [n, 338]
    assert match.any(1).all()  # every output is a (possibly mirrored) crop of the padded image
    k = match.float().argmax(1)
    flipped, pos = k >= 169, k % 169
    tops, lefts = pos // 13, pos % 13
    assert 0.35 < flipped.float().mean() < 0.65
    assert set(tops.tolist()) == set(range(13)) and set(lefts.tolist()) == set(range(13))


def test_brightness_range_on_constant_images():
    x = torch.full((2000, 3, 4, 4), 100.0)
    out = T.random_brightness(x, 63.0, torch.Generator().manual_seed(0))
    delta = out - 100.0
    per_image = delta[:, :1, :1, :1]
    assert torch.equal(delta, per_image.expand_as(delta))  # one delta per image
    assert delta.abs().max() <= 63 and delta.min() < -55 and delta.max() > 55
    assert abs(delta.mean().item()) < 3


def test_contrast_range_and_tf_formula():
    x = torch.zeros(2000, 3, 2, 2)
    x[:, :, 0] = 10.0
    x[:, :, 1] = 30.0  # per-channel mean 20
    out = T.random_contrast(x, 0.2, 1.8, torch.Generator().manual_seed(0))
    factor = (out[:, :, 1, 0] - out[:, :, 0, 0]) / 20.0  # [N, C]
    assert torch.allclose(factor, factor[:, :1].expand_as(factor))  # one factor per image
    assert torch.allclose(out.mean(dim=(2, 3)), torch.full((2000, 3), 20.0))  # the mean is kept
    assert factor.min() >= 0.2 - 1e-5 and factor.max() <= 1.8 + 1e-5
    assert factor.min() < 0.3 and factor.max() > 1.7
    const = torch.full((5, 3, 4, 4), 42.0)
    assert torch.allclose(T.random_contrast(const, 0.2, 1.8), const)  # nothing to stretch
    # channels use their own means
    y = torch.stack([torch.full((2, 2), 10.0), torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.zeros(2, 2)])[None]
    z = T.adjust_contrast(y, torch.tensor([2.0]))
    assert torch.equal(z[0, 0], y[0, 0]) and z[0, 1].tolist() == [[-1.0, 3.0], [-1.0, 3.0]]


def test_standard_normalisation_and_padding():
    x = _images(4)
    out = T.cifar_standard_eval(x)
    mean = torch.tensor(T.CIFAR_MEAN)[None, :, None, None]
    std = torch.tensor(T.CIFAR_STD)[None, :, None, None]
    assert torch.allclose(out, (x.float() / 255 - mean) / std)
    # constant white images: a padded (zero) pixel reads -mean/std after normalisation
    white = torch.full((200, 3, 32, 32), 255, dtype=torch.uint8)
    tr = T.cifar_standard_train(white, generator=torch.Generator().manual_seed(0))
    pad_value, white_value = (-mean / std).flatten(), ((1 - mean) / std).flatten()
    assert torch.allclose(tr[:, :, 16, 16], white_value.expand(200, 3))
    corner = tr[:, :, 0, 0]
    shifted = (corner - pad_value).abs().amax(1) < 1e-5
    assert 0.3 < shifted.float().mean() < 0.9  # crops reaching into the padding happen, not always
    assert T.cifar_standard_train(_images(4), generator=torch.Generator().manual_seed(0)).shape == (4, 3, 32, 32)


def test_transforms_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        T.cifar_paper_eval(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop size 24"):
        T.center_crop(torch.zeros(1, 3, 20, 20), 24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transforms_on_gpu_match_cpu_with_a_cpu_generator():
    x = _images()
    for fn in (T.cifar_paper_train, T.cifar_standard_train):
        cpu = fn(x, generator=torch.Generator().manual_seed(4))
        gpu = fn(x.cuda(), generator=torch.Generator().manual_seed(4))
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert T.cifar_paper_train(x.cuda(), generator=gen).device.type == "cuda"
    assert torch.allclose(T.cifar_paper_eval(x.cuda()).cpu(), T.cifar_paper_eval(x), atol=1e-5)
