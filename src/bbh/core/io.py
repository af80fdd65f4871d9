"""Writing files: atomically (a temporary file in the same directory, then ``os.replace``), and checking
up front that an output folder can be written to (:func:`ensure_writable`)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OutputNotWritableError(OSError):
    """An output folder that cannot be created or written to (read-only file system, permissions...).

    ``str(err)`` is one line: ``cannot write to PATH: REASON``; ``errno``, ``strerror`` and ``filename``
    are those of the underlying error.
    """

    def __init__(self, path: str | Path, reason: str, code: int | None = None) -> None:
        super().__init__(code, reason, str(path))
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot write to {self.path}: {self.reason}"


def ensure_writable(directory: str | Path) -> Path:
    """Create ``directory`` (and its parents) if needed and check that a file can be created in it.

    Commands call this before they compute anything, so that an unwritable output fails at once with a clear
    message instead of after the work is done. The probe file is removed again.

    Args:
        directory: the output folder.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        OutputNotWritableError: the folder cannot be created, is not a folder, or refuses new files.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise OutputNotWritableError(path, "it exists and is not a directory", errno.ENOTDIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bbh-write-test-")
    except OSError as err:
        raise OutputNotWritableError(path, err.strerror or str(err), err.errno) from err
    os.close(fd)
    os.unlink(probe)
    return path


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; nothing is left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    return atomic_write(path, write)


def cache_dir(*parts: str) -> Path:
    """bbh's cache folder (nothing is created): ``$BBH_CACHE_DIR``, else ``$XDG_CACHE_HOME/bbh``, else
    ``~/.cache/bbh``; ``parts`` name a sub-folder. The one place every cache (native build, toy HMC,
    default data directory) is resolved."""
    env = os.environ.get("BBH_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bbh"
    return root.joinpath(*parts)


__all__ = ["OutputNotWritableError", "atomic_write", "cache_dir", "ensure_writable", "write_json"]


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object stored in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
