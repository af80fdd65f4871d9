"""How many CPU threads torch uses: the one owner of bbh's thread policy (``docs/threads.md``).

Why: torch starts with one intra-op thread per core, and its OpenMP threads spin while they wait for work.
The networks of ``bbh toy``, ``bbh uci`` and the README's regression example are so small that a step is a
few matrix products of ~100 x 100; a second thread barely helps them on an idle machine, and on a shared
one (another job on the other core) the spinning threads wait for each other: a user measured ``bbh toy``
at 9 min 40 s with torch's default against ~20 s with one thread, with identical numbers.

The policy (:func:`choose_threads`), first rule that applies:

1. a count asked for in the call (``bbh ... --threads N``, a runner's ``threads=N``), capped at the cores
   this process may use (:func:`available_cores`): never more busy threads than cores;
2. a count the user set outside bbh: ``OMP_NUM_THREADS`` in the environment (as given), or a
   ``torch.set_num_threads`` call made after ``import bbh`` that changed the count (kept as it is; a call made
   before ``import bbh`` cannot be told from torch's default: pass ``threads=`` instead), or an explicit
   choice of an enclosing scope;
3. the kind of work: ``"small"`` networks and one-process-per-cell grids get 1 thread per process,
   ``"large"`` networks (LeNet, ResNets: ``bbh train``, ``bbh reproduce``) the cores this process may use.

:func:`use_threads` applies a choice for a block and restores the previous count after it. The command line
enables :func:`announcing`, so that the first work done under a choice prints one line saying what was chosen
(``bbh: 1 thread (small networks; --threads N to change)``); the library prints nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, TextIO

import torch

Kind = Literal["small", "large"]
"""The kind of work: ``"small"`` networks (one thread per process) or ``"large"`` ones (every core)."""
KINDS: tuple[Kind, ...] = ("small", "large")


@dataclass(frozen=True)
class ThreadChoice:
    """A number of threads and why: ``reason`` completes the sentence "bbh: N threads (REASON)";
    ``explicit`` when the user asked for the count (scopes inside keep it)."""

    threads: int
    reason: str
    explicit: bool = False

    def line(self) -> str:
        """The one line the command line prints about the choice."""
        return f"bbh: {self.threads} thread{'' if self.threads == 1 else 's'} ({self.reason})"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset),
    not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def parse_threads(value: object) -> int:
    """A thread count as given by a user: an int >= 1 (also as text); anything else is a ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"threads must be a whole number >= 1, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"threads must be a whole number >= 1, got {value!r}") from None
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {value!r}")
    return value


def _omp_threads(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` when it holds a count (OpenMP reads only its first entry), else None."""
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        return parse_threads(value) if value else None
    except ValueError:
        return None


def choose_threads(kind: Kind, requested: int | None = None, *, cores: int | None = None,
                   environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """The policy of the module docstring, pure given ``cores`` and ``environ`` (defaults: this process's).

    Args:
        kind: ``"small"`` (1 thread) or ``"large"`` (``cores`` threads).
        requested: a count asked for (``--threads``); wins over everything, capped at ``cores``.
        cores: the cores this process may use (default :func:`available_cores`).
        environ: the environment to read ``OMP_NUM_THREADS`` from (default ``os.environ``).

    Raises:
        ValueError: an unknown kind or a requested count that is not an int >= 1.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of work {kind!r}; expected one of {', '.join(KINDS)}")
    cores = available_cores() if cores is None else cores
    if requested is not None:
        requested = parse_threads(requested)
        if requested > cores:
            return ThreadChoice(cores, f"--threads {requested}, capped at {_cores(cores)}", explicit=True)
        return ThreadChoice(requested, f"--threads {requested}", explicit=True)
    omp = _omp_threads(os.environ if environ is None else environ)
    if omp is not None:
        return ThreadChoice(omp, f"OMP_NUM_THREADS={omp}", explicit=True)
    if kind == "small":
        return ThreadChoice(1, "small networks; --threads N to change")
    return ThreadChoice(cores, f"{_cores(cores)}; --threads N to change")


def _cores(cores: int) -> str:
    return f"the {cores} core{'' if cores == 1 else 's'} this process may use"


_current: ContextVar[ThreadChoice | None] = ContextVar("bbh_threads_current", default=None)
_announce_to: ContextVar[TextIO | None] = ContextVar("bbh_threads_announce_to", default=None)
_announced: ContextVar[int | None] = ContextVar("bbh_threads_announced", default=None)
_baseline = torch.get_num_threads()  # torch's count when bbh was imported: its default, or OMP_NUM_THREADS


def _set(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def decide(kind: Kind, requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads` for this process, plus what the user set outside it (rule 2): an enclosing
    explicit choice, or, outside every bbh scope, a torch count other than the one at ``import bbh``."""
    if requested is None:
        outer = _current.get()
        if outer is not None and outer.explicit:
            return outer
        now = torch.get_num_threads()
        if outer is None and now != _baseline and _omp_threads(os.environ) is None:
            return ThreadChoice(now, "set with torch.set_num_threads", explicit=True)
    return choose_threads(kind, requested)


@contextmanager
def use_threads(kind: Kind, requested: int | None = None) -> Iterator[ThreadChoice]:
    """Run the block with the threads :func:`decide` chooses; the previous count is restored after it.

    Example::

        with bbh.threads.use_threads("small"):   # one thread for a small network
            trainer.fit((x, y))
    """
    choice = decide(kind, requested)
    previous = torch.get_num_threads()
    token = _current.set(choice)
    _set(choice.threads)
    try:
        yield choice
    finally:
        _current.reset(token)
        _set(previous)


@contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """Run the block with exactly ``threads`` torch threads (None: as they are); restored after it. For code
    that knows its count (the HMC references), outside the policy."""
    if threads is None:
        yield
        return
    threads = parse_threads(threads)
    previous = torch.get_num_threads()
    _set(threads)
    try:
        yield
    finally:
        _set(previous)


@contextmanager
def announcing(stream: TextIO | None = None) -> Iterator[None]:
    """Within the block, :func:`announce` prints the line of a choice whenever the count changes, to ``stream``
    (default stderr). The command line wraps its commands in this; the library stays silent."""
    token = _announce_to.set(stream if stream is not None else sys.stderr)
    seen = _announced.set(None)
    try:
        yield
    finally:
        _announced.reset(seen)
        _announce_to.reset(token)


def announce() -> None:
    """Print the line of the choice in force when :func:`announcing` and its count is not the one said last.
    Called where work starts (a Trainer's ``fit``, a runner's loop), so a command that stops on a bad argument
    or an unwritable folder says only that."""
    stream, choice = _announce_to.get(), _current.get()
    if stream is None or choice is None or _announced.get() == choice.threads:
        return
    _announced.set(choice.threads)
    stream.write(choice.line() + "\n")  # one write: a Ctrl-C cannot split the line from its newline
    stream.flush()


__all__ = ["KINDS", "Kind", "ThreadChoice", "announce", "announcing", "available_cores", "choose_threads",
           "decide", "parse_threads", "thread_count", "use_threads"]
