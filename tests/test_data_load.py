"""``bbh.data.load`` from ``import bbh`` on tiny fake files, and a wrong data folder (issue 25, item 4).

A wrong folder gives one line naming the missing files and the folder, creates nothing there, and no download is
attempted unless asked (``download=True`` / ``--download``): the downloader is replaced by one that fails the test.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_data import make_fake_cifar, make_fake_mnist
from torch import nn

import bbh
import bbh.data.download as dl
from bbh.cli import main
from bbh.data import MissingDataError


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch a file fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail(f"a download was attempted without being asked: {args[:2]}")

    monkeypatch.setattr(dl, "download_file", refuse)
    monkeypatch.setattr(dl, "_fetch", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def test_load_from_import_bbh_gives_network_ready_tensors(tmp_path: Path, no_network: None) -> None:
    fake = make_fake_mnist(tmp_path, n_train=10, n_test=4, n_outliers=3)
    test = bbh.data.load("mnist", tmp_path)  # split="test" by default
    x, y = test.tensors
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(fake["test_x"]).unsqueeze(1).float() / 255)
    assert np.array_equal(y.numpy(), fake["test_y"])
    assert len(bbh.data.load("mnist", tmp_path, split="train")) == 10
    outliers = bbh.data.load("notmnist", tmp_path)
    assert outliers.tensors[0].shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="notMNIST has only a test split"):
        bbh.data.load("notmnist", tmp_path, split="train")
    with pytest.raises(ValueError, match="valid: mnist, notmnist, cifar5, cifar10"):
        bbh.data.load("svhn", tmp_path)

    method = bbh.create("map", nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)))
    results = bbh.evaluate(method, test.tensors, ood={"notmnist": outliers.tensors}, seed=0)
    assert results.test.n == 4 and results.ood["notmnist"].metrics.n == 3


def test_load_cifar10_and_cifar5(tmp_path: Path, no_network: None) -> None:
    fake = make_fake_cifar(tmp_path, per_batch=4, n_test=10)
    x, y = bbh.data.load("cifar10", tmp_path, split="test").tensors
    assert x.shape == (10, 3, 24, 24) and x.dtype == torch.float32  # the paper's preprocessing by default
    assert np.array_equal(y.numpy(), fake["test_y"])
    x, _ = bbh.data.load("cifar10", tmp_path, split="train", preprocessing="standard").tensors
    assert x.shape == (20, 3, 32, 32)
    _, y5 = bbh.data.load("cifar5", tmp_path, split="train").tensors
    assert np.array_equal(y5.numpy(), fake["train_y"][fake["train_y"] < 5])


@pytest.mark.parametrize("name", ["mnist", "notmnist", "cifar5", "cifar10"])
def test_wrong_folder_one_line_nothing_created_no_download(tmp_path: Path, no_network: None, name: str) -> None:
    other = tmp_path / "other-dataset"  # a folder that exists and holds something else
    (other / "uci" / "concrete").mkdir(parents=True)
    (other / "uci" / "concrete" / "data.txt").write_text("1 2\n")
    before = _listing(tmp_path)
    with pytest.raises(MissingDataError) as info:
        bbh.data.load(name, other)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"missing data files in {other}: ")
    folder = "cifar10" if name.startswith("cifar") else name
    first_file = "cifar-10-batches-py/data_batch_1" if folder == "cifar10" else "t10k-images-idx3-ubyte.gz"
    assert f"{folder}/ lacks " in msg and first_file in msg
    assert "download=True (or --download) fetches them" in msg
    assert _listing(tmp_path) == before  # no mnist/, notmnist/, cifar10/ made


def test_folder_that_does_not_exist_is_not_created(tmp_path: Path, no_network: None) -> None:
    wrong = tmp_path / "typo" / "data"
    with pytest.raises(MissingDataError, match=r"typo/data \(no such folder\): mnist/ lacks train-images"):
        bbh.data.load_task("mnist", wrong)
    assert not (tmp_path / "typo").exists()


def test_pointing_at_the_dataset_folder_itself_says_so(tmp_path: Path, no_network: None) -> None:
    make_fake_mnist(tmp_path)
    with pytest.raises(MissingDataError) as info:
        bbh.data.load("mnist", tmp_path / "mnist")
    msg = str(info.value)
    assert "\n" not in msg and "itself holds mnist files: the data folder is the one that holds mnist/" in msg
    assert _listing(tmp_path / "mnist") == sorted(p.name for p in (tmp_path / "mnist").iterdir())  # no mnist/mnist


def _fake_mirror(monkeypatch: pytest.MonkeyPatch, source: Path, calls: list[str]) -> None:
    """``download_file`` copies from ``source`` (laid out like a data folder) instead of the network."""

    def download_file(urls: Any, dest: Path, checksum: Any, **kwargs: Any) -> Path:
        dest = Path(dest)
        calls.append(f"{dest.parent.name}/{dest.name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / dest.parent.name / dest.name, dest)
        return dest

    monkeypatch.setattr(dl, "download_file", download_file)


def test_download_true_fetches_then_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_mnist(tmp_path / "source")
    calls: list[str] = []
    _fake_mirror(monkeypatch, tmp_path / "source", calls)
    data = tmp_path / "data"
    x, y = bbh.data.load("mnist", data, download=True, progress=False).tensors
    assert np.array_equal(y.numpy(), fake["test_y"]) and len(calls) == 4
    assert not (data / "notmnist").exists()  # only what was asked for
    assert bbh.data.fetch("mnist", data, progress=False) == data  # the task: MNIST and its outliers, notMNIST
    assert _listing(data / "notmnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(calls) == 6


def test_failed_download_takes_back_the_folders_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise dl.DownloadError("could not download x:\n  http://example.invalid/x: gaierror: no such host")

    monkeypatch.setattr(dl, "download_file", unreachable)
    data = tmp_path / "data"
    with pytest.raises(MissingDataError, match="downloading them failed") as info:
        bbh.data.load("notmnist", data, download=True, progress=False)
    first, *rest = str(info.value).splitlines()
    assert first.startswith(f"missing data files in {data} (no such folder): notmnist/ lacks ")
    assert all("example.invalid" in line for line in rest)
    assert not data.exists()


# ---- the command line -------------------------------------------------------------------------------------

def test_cli_train_wrong_data_dir_is_one_line_and_creates_nothing(tmp_path: Path, no_network: None,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    status = main(["train", "--task", "mnist", "--method", "map", "--data-dir", str(wrong),
                   "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("bbh: ")]
    assert len(lines) == 1 and lines[0].startswith(f"bbh: missing data files in {wrong}: mnist/ lacks ")
    assert "http" not in err and "--download" in lines[0]
    assert _listing(wrong) == []


class _Stop(Exception):
    """Raised by the fakes below once they have seen their arguments."""


def test_cli_download_flags_fetch_what_the_command_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bbh.reports.runs as runs_mod

    seen: list[tuple[Any, ...]] = []

    def fetch(names: Any, data_dir: Any = None, **kwargs: Any) -> None:
        seen.append((names, data_dir))
        raise _Stop

    monkeypatch.setattr(bbh.data, "fetch", fetch)
    data = str(tmp_path / "data")
    with pytest.raises(_Stop):
        main(["train", "--task", "mnist", "--method", "map", "--download", "--data-dir", data,
              "--run-dir", str(tmp_path / "run"), "--no-progress"])
    with pytest.raises(_Stop):
        main(["reproduce", "table3", "--download", "--data-dir", data, "--out", str(tmp_path / "repro"),
              "--no-progress"])
    assert seen == [("mnist", data), (["mnist"], data)]

    def evaluate_run(run: Any, data_dir: Any = None, **kwargs: Any) -> None:
        seen.append(("evaluate", kwargs["download"]))
        raise _Stop

    monkeypatch.setattr(runs_mod, "evaluate_run", evaluate_run)
    for flags, expected in (([], False), (["--download"], True)):
        with pytest.raises(_Stop):
            main(["evaluate", str(tmp_path / "run"), *flags, "--no-progress"])
        assert seen[-1] == ("evaluate", expected)
