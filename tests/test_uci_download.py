"""UCI downloads (bbh.data.uci_download.ensure_uci) against a local HTTP server serving small synthetic folders."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from test_download import _QuietHandler, _serve
from test_uci_data import synthetic, write_uci_folder

import bbh.data.uci_download as dl
from bbh.data import UCI_NAMES, ChecksumError, DataFormatError, MissingDataError, ensure_uci, load_uci

SHARED_UCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci"
DEAD = "http://127.0.0.1:9"  # nothing listens there
N_SPLITS = 3  # synthetic() makes 3 splits


def _publish(served_folder: Path, name: str) -> Path:
    """A synthetic dataset in the standard layout at ``<served>/uci/<name>/``."""
    data, splits = synthetic()
    return write_uci_folder(served_folder / "uci" / name, data, [0, 1, 2], 4, splits)


def _point_at(monkeypatch, url: str, served_folder: Path, pinned: tuple[str, ...] = ()) -> None:
    """Every UCI source -> the local server (so nothing reaches the internet); ``pinned`` datasets get their
    synthetic files' sha256 as the pinned table, the others none (trust on first use)."""
    monkeypatch.delenv("BBH_DATA_MIRROR", raising=False)
    for name in UCI_NAMES:
        monkeypatch.setitem(dl.MIRRORS, f"uci/{name}", [f"{url}/uci/{name}/"])
        monkeypatch.delitem(dl.UCI_CHECKSUMS, name, raising=False)
    for name in pinned:
        folder = served_folder / "uci" / name
        monkeypatch.setitem(dl.UCI_CHECKSUMS, name, {f: _sha256(folder / f) for f in dl.uci_files(N_SPLITS)})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hidden(folder: Path) -> list[str]:
    """Temporary files or folders left anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob(".*")) if folder.exists() else []


def test_pinned_download_gives_a_loadable_verified_folder(served, tmp_path, monkeypatch, capsys):
    folder, url = served
    src = _publish(folder, "concrete")
    _point_at(monkeypatch, url, folder, pinned=("concrete",))
    data = tmp_path / "data"
    got = ensure_uci(["concrete"], data, progress=False)
    target = data / "uci" / "concrete"
    assert got == {"concrete": target}
    ds = load_uci(target)
    assert ds.n_splits == N_SPLITS and ds.x.shape == (30, 3) and ds.n_hidden == 50
    assert sorted(p.name for p in target.iterdir()) == sorted([*dl.uci_files(N_SPLITS), "SHA256SUMS"])
    assert all((target / f).read_bytes() == (src / f).read_bytes() for f in dl.uci_files(N_SPLITS))
    assert _hidden(data) == []
    manifest = dict(reversed(line.split("  ")) for line in (target / "SHA256SUMS").read_text().splitlines())
    assert manifest == dl.UCI_CHECKSUMS["concrete"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert "trust-on-first-use" not in capsys.readouterr().err


def test_trust_on_first_use_warns_writes_a_manifest_and_catches_later_changes(served, tmp_path, monkeypatch,
                                                                                capsys):
    folder, url = served
    src = _publish(folder, "yacht")
    _point_at(monkeypatch, url, folder)
    data = tmp_path / "data"
    target = ensure_uci("yacht", data, progress=True)["yacht"]
    err = capsys.readouterr().err
    assert "'yacht' is trust-on-first-use" in err
    assert load_uci(target).n_splits == N_SPLITS
    # a later change is caught on use
    (target / "index_test_1.txt").write_text("0\n")
    with pytest.raises(ChecksumError, match=r"index_test_1\.txt changed since download"):
        ensure_uci(["yacht"], data, progress=False)
    # a deleted file is fetched again and verified against the manifest written at the first download
    (target / "index_test_1.txt").unlink()
    (target / "data.txt").unlink()
    assert ensure_uci(["yacht"], data, progress=False) == {"yacht": target}
    assert (target / "data.txt").read_bytes() == (src / "data.txt").read_bytes()
    # ... so a source that changed since then is refused
    (target / "data.txt").unlink()
    (src / "data.txt").write_text((src / "data.txt").read_text() * 2)
    with pytest.raises(ChecksumError, match=r"'yacht'.*data\.txt"):
        ensure_uci(["yacht"], data, progress=False)
    assert not (target / "data.txt").exists() and _hidden(data) == []


def test_checksum_mismatch_leaves_no_dataset_folder(served, tmp_path, monkeypatch):
    folder, url = served
    _publish(folder, "energy")
    _point_at(monkeypatch, url, folder, pinned=("energy",))
    monkeypatch.setitem(dl.UCI_CHECKSUMS["energy"], "index_test_2.txt", "0" * 64)
    data = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"'energy'.*index_test_2\.txt") as info:
        ensure_uci(["energy"], data, progress=False)
    assert "0" * 64 in str(info.value) and "nothing was kept" in str(info.value)
    assert not (data / "uci" / "energy").exists()
    assert _hidden(data) == []


def test_404_for_one_split_file_leaves_no_folder_and_says_so(served, tmp_path, monkeypatch):
    folder, url = served
    (_publish(folder, "yacht") / "index_test_1.txt").unlink()
    _point_at(monkeypatch, url, folder)
    data = tmp_path / "data"
    with pytest.raises(MissingDataError) as info:
        ensure_uci(["yacht"], data, progress=False)
    msg = str(info.value)
    assert "yacht" in msg and "HTTP 404" in msg and f"{url}/uci/yacht/index_test_1.txt" in msg
    assert f"{data / 'uci' / 'yacht'}/" in msg
    assert not (data / "uci" / "yacht").exists() and _hidden(data) == []


class _DiesMidway(_QuietHandler):
    """Serves ``index_train_2.txt`` half-way, then drops the connection."""

    def do_GET(self) -> None:
        if not self.path.endswith("/index_train_2.txt"):
            return super().do_GET()
        body = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


def test_connection_lost_midway_leaves_no_folder(tmp_path, monkeypatch):
    folder = tmp_path / "served"
    _publish(folder, "yacht")
    server, url = _serve(folder, _DiesMidway)
    try:
        _point_at(monkeypatch, url, folder)
        data = tmp_path / "data"
        with pytest.raises(MissingDataError, match=r"(?s)yacht.*connection lost") as info:
            ensure_uci(["yacht"], data, progress=False)
        assert "index_train_2.txt" in str(info.value)
        assert not (data / "uci" / "yacht").exists() and _hidden(data) == []
    finally:
        server.shutdown()
        server.server_close()


def test_offline_names_the_datasets_urls_and_where_to_put_the_files(tmp_path, monkeypatch):
    server, url = _serve(tmp_path)
    server.shutdown()
    server.server_close()  # connection refused from now on
    _point_at(monkeypatch, url, tmp_path)
    data = tmp_path / "data"
    (data / "uci" / "concrete").mkdir(parents=True)  # an empty folder of a downloadable dataset: filled by hand
    with pytest.raises(MissingDataError) as info:
        ensure_uci(["yacht", "protein-tertiary-structure"], data, progress=False)
    msg = str(info.value)
    for name in ("yacht", "protein-tertiary-structure"):
        assert f"{data / 'uci' / name}/" in msg and f"{url}/uci/{name}/n_splits.txt" in msg
    assert "downloading was not possible" in msg and "index_train_K.txt" in msg
    assert msg.count("ConnectionRefusedError") == 1 and "was unreachable" in msg  # the dead host is skipped
    assert not (data / "uci" / "yacht").exists() and _hidden(data) == []
    with pytest.raises(MissingDataError, match=r"(?s)download=False.*concrete/  lacks data\.txt"):
        ensure_uci(["concrete"], data, download=False)


def test_env_mirror_layout(served, tmp_path, monkeypatch):
    folder, url = served
    _publish(folder, "kin8nm")
    _point_at(monkeypatch, url, folder, pinned=("kin8nm",))
    monkeypatch.setitem(dl.MIRRORS, "uci/kin8nm", [])
    monkeypatch.setenv("BBH_DATA_MIRROR", f"{DEAD}, {url}")  # <base>/uci/<name>/<file>; the first one is down
    assert load_uci(ensure_uci(["kin8nm"], tmp_path / "data", progress=False)["kin8nm"]).n_splits == N_SPLITS


def test_present_folders_are_used_as_they_are(tmp_path, monkeypatch):
    _point_at(monkeypatch, DEAD, tmp_path)  # any download attempt would fail
    data = tmp_path / "data"
    _publish(data, "concrete")
    _publish(data, "my-own")
    got = ensure_uci(["concrete", "my-own"], data, progress=False)
    assert got == {"concrete": data / "uci" / "concrete", "my-own": data / "uci" / "my-own"}
    assert not (data / "uci" / "concrete" / "SHA256SUMS").exists()  # nothing written into a user's folder
    (data / "uci" / "my-own" / "index_test_2.txt").unlink()
    with pytest.raises(MissingDataError, match=r"(?s)my-own/  lacks index_test_2\.txt.*no known source"):
        ensure_uci(["my-own"], data, progress=False)


@pytest.mark.parametrize("name", ["nope", "../uci", ".hidden", ""])
def test_unknown_names_are_refused(tmp_path, name):
    (tmp_path / "uci" / ".hidden").mkdir(parents=True)
    with pytest.raises(ValueError, match="unknown UCI dataset.*valid: bostonHousing, concrete"):
        ensure_uci([name], tmp_path, download=False)


def test_structurally_bad_downloads_are_not_kept(served, tmp_path, monkeypatch):
    folder, url = served
    src = _publish(folder, "wine-quality-red")
    _point_at(monkeypatch, url, folder)
    data = tmp_path / "data"
    (src / "index_test_0.txt").write_text((src / "index_train_0.txt").read_text())  # train and test overlap
    with pytest.raises(DataFormatError, match="'wine-quality-red'.*not a valid dataset folder.*overlap"):
        ensure_uci(["wine-quality-red"], data, progress=False)
    (src / "n_splits.txt").write_text("100000\n")
    with pytest.raises(DataFormatError, match="100000 splits"):
        ensure_uci(["wine-quality-red"], data, progress=False)
    assert not (data / "uci" / "wine-quality-red").exists() and _hidden(data) == []


@pytest.mark.skipif(not SHARED_UCI.is_dir(), reason="no ../shared/data/uci reference copy")
def test_pinned_table_matches_the_reference_copies_and_their_readme_md5s():
    md5s = dict(re.findall(r"([\w-]+)\s+([0-9a-f]{32})", (SHARED_UCI / "README.md").read_text()))
    assert set(md5s) == set(dl.UCI_CHECKSUMS)
    for name, table in dl.UCI_CHECKSUMS.items():
        folder = SHARED_UCI / name
        assert hashlib.md5((folder / "data.txt").read_bytes()).hexdigest() == md5s[name]
        assert set(table) == {p.name for p in folder.iterdir()} == set(dl.uci_files(20))
        assert all(_sha256(folder / f) == digest for f, digest in table.items()), name


@pytest.mark.skipif(not SHARED_UCI.is_dir(), reason="no ../shared/data/uci reference copy")
def test_real_pinned_download_from_a_local_mirror_of_the_reference_copies(tmp_path, monkeypatch):
    server, url = _serve(SHARED_UCI.parent)  # files at <url>/uci/<name>/<file>, the $BBH_DATA_MIRROR layout
    try:
        monkeypatch.setenv("BBH_DATA_MIRROR", url)
        for name in UCI_NAMES:
            monkeypatch.setitem(dl.MIRRORS, f"uci/{name}", [])
        got = ensure_uci(["bostonHousing", "energy"], tmp_path, progress=False)  # the real pinned checksums
        assert load_uci(got["bostonHousing"]).x.shape == (506, 13) and load_uci(got["energy"]).n_splits == 20
    finally:
        server.shutdown()
        server.server_close()
