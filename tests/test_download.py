"""Downloads against a local HTTP server serving tiny fake files (no network, no real data)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from test_data import make_fake_cifar, make_fake_mnist

import bbh.data.download as dl
import bbh.data.tasks as tasks_mod
from bbh.data import ChecksumError, DataFormatError, MissingDataError, download_file, load_task

MNIST_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"]
NOTMNIST_NAMES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def _serve(folder: Path, handler_class: type[http.server.SimpleHTTPRequestHandler] = _QuietHandler,
           ) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(handler_class, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _point_at(monkeypatch, url: str, served: Path, datasets=("mnist", "notmnist")) -> None:
    """MIRRORS -> the local server, CHECKSUMS -> the fake files' checksums."""
    for d in datasets:
        monkeypatch.setitem(dl.MIRRORS, d, [f"{url}/{d}/"])
        for r in dl.RESOURCES[d]:
            if (served / d / r.filename).exists():
                monkeypatch.setitem(dl.CHECKSUMS, r.key, _sha256(served / d / r.filename))
    monkeypatch.delenv("BBH_DATA_MIRROR", raising=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_download_verify_and_load_mnist(served, tmp_path, monkeypatch):
    folder, url = served
    fake = make_fake_mnist(folder)
    _point_at(monkeypatch, url, folder)
    monkeypatch.setattr(tasks_mod, "MNIST_VALIDATION", 2)
    data = tmp_path / "data"
    task = load_task("mnist", data, download=True, progress=False)
    assert np.array_equal(task.train_x[:, 0].numpy(), fake["train_x"][2:])
    assert np.array_equal(task.outlier_y.numpy(), fake["out_y"])
    assert _leftovers(data / "mnist") == sorted(MNIST_NAMES)  # no temporary files
    assert _leftovers(data / "notmnist") == sorted(NOTMNIST_NAMES)
    for name in MNIST_NAMES:
        assert (data / "mnist" / name).read_bytes() == (folder / "mnist" / name).read_bytes()
    # present files are not fetched again, even with the server gone
    monkeypatch.setitem(dl.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    assert len(load_task("mnist", data, download=True, progress=False).test_x) == 4


def test_md5_checksums_and_env_mirror(served, tmp_path, monkeypatch):
    folder, url = served
    make_fake_mnist(folder)
    _point_at(monkeypatch, url, folder)
    for d in ("mnist", "notmnist"):
        monkeypatch.setitem(dl.MIRRORS, d, [])  # only the env mirror is left: <base>/<dataset>/<file>
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(dl.CHECKSUMS, key, "md5:" + hashlib.md5((folder / key).read_bytes()).hexdigest())
    monkeypatch.setenv("BBH_DATA_MIRROR", f"http://127.0.0.1:9, {url}")  # the first one is down
    root = dl.ensure_datasets(["mnist", "notmnist"], tmp_path / "data", progress=False)
    assert dl.missing_files("mnist", root) == [] and dl.missing_files("notmnist", root) == []


def test_checksum_mismatch_leaves_nothing(served, tmp_path, monkeypatch):
    folder, url = served
    make_fake_mnist(folder)
    _point_at(monkeypatch, url, folder)
    monkeypatch.setitem(dl.CHECKSUMS, "mnist/train-images-idx3-ubyte.gz", "sha256:" + "0" * 64)
    data = tmp_path / "data"
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz") as info:
        load_task("mnist", data, download=True, progress=False)
    assert "0" * 64 in str(info.value) and "nothing was kept" in str(info.value)
    assert not (data / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in _leftovers(data) if p.startswith(".")]  # no temporary file either


def test_download_file_tries_mirrors_in_order(served, tmp_path):
    folder, url = served
    (folder / "f.bin").write_bytes(b"hello")
    checksum = "sha256:" + hashlib.sha256(b"hello").hexdigest()
    dest = download_file([f"{url}/missing.bin", "http://127.0.0.1:9/f.bin", f"{url}/f.bin"], tmp_path / "f.bin",
                         checksum, progress=True)
    assert dest.read_bytes() == b"hello"


def test_server_down_names_files_folder_and_urls(tmp_path, monkeypatch):
    server, url = _serve(tmp_path)
    server.shutdown()
    server.server_close()  # nothing listens on this port any more
    for d in ("mnist", "notmnist"):
        monkeypatch.setitem(dl.MIRRORS, d, [f"{url}/{d}/"])
    monkeypatch.delenv("BBH_DATA_MIRROR", raising=False)
    data = tmp_path / "data"
    with pytest.raises(MissingDataError) as info:
        load_task("mnist", data, download=True, progress=False)
    msg = str(info.value)
    for name in MNIST_NAMES:
        assert name in msg.splitlines()[0] and f"{url}/mnist/{name}" in msg
    assert f"in {data} (no such folder): mnist/ lacks" in msg and "notmnist/ lacks" in msg
    assert "downloading them failed" in msg and "ConnectionRefusedError" in msg
    assert msg.count("ConnectionRefusedError") == 1  # later files skip the unreachable host
    assert "was unreachable" in msg
    assert not data.exists()  # the folders the failed download made are taken back


def test_http_404_is_reported_as_missing(served, tmp_path, monkeypatch):
    folder, url = served  # serves an empty folder
    _point_at(monkeypatch, url, folder, datasets=("cifar10",))
    with pytest.raises(MissingDataError, match="HTTP 404") as info:
        load_task("cifar5", tmp_path / "data", download=True, progress=False)
    assert "cifar-10-python.tar.gz" in str(info.value) and "data_batch_1" in str(info.value)


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _cifar_archive_files(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    fake = make_fake_cifar(tmp_path / "src", per_batch=10, n_test=20)
    src = tmp_path / "src" / "cifar10"
    files = {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}
    files["cifar-10-batches-py/batches.meta"] = b"meta"
    return files, fake


def test_download_and_extract_cifar(served, tmp_path, monkeypatch):
    folder, url = served
    files, fake = _cifar_archive_files(tmp_path)
    _tar(folder / "cifar10" / "cifar-10-python.tar.gz", files)
    _point_at(monkeypatch, url, folder, datasets=("cifar10",))
    data = tmp_path / "data"
    task = load_task("cifar5", data, download=True, progress=False)
    keep = fake["train_y"] < 5
    assert np.array_equal(task.train_x.numpy(), fake["train_x"][keep])
    assert len(task.test_x) + len(task.outlier_x) == 20
    assert _leftovers(data / "cifar10") == sorted(["cifar-10-batches-py", "data_batch_1", "data_batch_2",
                                                   "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"])


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil-abs", "cifar-10-batches-py/../../evil", "symlink"])
def test_unsafe_archive_is_rejected(served, tmp_path, monkeypatch, bad):
    folder, url = served
    files, _ = _cifar_archive_files(tmp_path)
    links = None
    if bad == "symlink":
        links = {"cifar-10-batches-py/link": "/etc/passwd"}
    else:
        files = {bad: b"owned", **files}
    _tar(folder / "cifar10" / "cifar-10-python.tar.gz", files, links)
    _point_at(monkeypatch, url, folder, datasets=("cifar10",))
    data = tmp_path / "data"
    with pytest.raises(DataFormatError, match="unsafe entry"):
        load_task("cifar5", data, download=True, progress=False)
    assert not (tmp_path / "evil").exists() and not (data / "evil").exists()
    assert not (data / "cifar10" / "cifar-10-batches-py").exists()  # nothing extracted
    assert not [p for p in _leftovers(data / "cifar10") if p.startswith(".extract")]


def test_archive_without_the_batches(served, tmp_path, monkeypatch):
    folder, url = served
    _tar(folder / "cifar10" / "cifar-10-python.tar.gz", {"cifar-10-batches-py/readme.html": b"x"})
    _point_at(monkeypatch, url, folder, datasets=("cifar10",))
    with pytest.raises(DataFormatError, match="lacks .*data_batch_1"):
        load_task("cifar5", tmp_path / "data", download=True, progress=False)
