"""Native CPU kernels for the hypernet output layers, built on first use and called through ctypes.

On the CPU, one BbH step on LeNet-5 streams the 222 M weights of the hypernets' output layers W [P, H]
four times (forward ``h W^T``, input gradient ``dy W``, the rank-S weight gradient ``dy^T h`` and the
optimizer update), each against only S = 5 rows. BLAS packs W for such skinny products and reaches a
fraction of the memory bandwidth. ``kernels.c`` holds plain loops that read each row of W once and, for the
optimizer, form each gradient row in L1 right before updating it, so that W and its Adam moments are read
and written exactly once (measured numbers in ``docs/design.md``).

The C file is compiled with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
``$BBH_CACHE_DIR`` (default ``~/.cache/bbh``), keyed by a hash of the source, the flags and the CPU, and
loaded with ctypes; ctypes releases the GIL, so rows are split over ``torch.get_num_threads()`` Python
threads. Where no compiler is found or the build fails, :func:`kernels` warns once and returns None and
every caller falls back to its pure PyTorch path. ``BBH_NATIVE=0`` turns the kernels off.

The rest of bbh does not call this module directly: :mod:`bbh.backends.ops` is the one seam, dispatching each
operation here when :func:`usable` says so and to its PyTorch implementation otherwise. The functions below
check their arguments (CPU float32, shapes, contiguity of what is written in place) and raise
``TypeError``/``ValueError`` before any pointer reaches C; :class:`RuntimeError` when the kernels are not
built.

Memory: the hypernet heads' large CPU tensors (gradients of hundreds of MB when not factored, the optimizer
state) are allocated at every step; backing them with transparent huge pages makes each allocation several
times cheaper (measured: an 800 MB gradient 0.43 s -> 0.14 s). bbh does not set environment variables when
imported; the ``bbh`` command line sets ``THP_MEM_ALLOC_ENABLE=1`` for its own process, and library users can
export ``THP_MEM_ALLOC_ENABLE=1`` themselves before starting Python (PyTorch reads it once, at its first CPU
tensor allocation: setting it later in the process has no effect).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ..core.io import cache_dir

SOURCE = Path(__file__).with_name("kernels.c")
FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno"], ["-O3", "-fno-math-errno"])
"""Compiler flags, tried in order (``-march=native`` lets the loops use AVX2/AVX-512 where present)."""

MIN_ELEMENTS = 1 << 18
"""Tensors with fewer elements take the PyTorch path: for them the thread hand-off costs more than it saves."""

_lock = threading.Lock()
_state: dict[str, object] = {}

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "bbh_head_forward": [_P, _P, _P, _P, _I, _I, _I, _I, _I],
    "bbh_head_input_grad": [_P, _P, _P, _I, _I, _I, _I, _I],
    "bbh_factored_adam": [_P, _P, _P, _P, _I, _I, _P, _I, _P, _P, _I, _D, _D, _D, _D, _D, _I, _I],
    "bbh_factored_rmsprop_tf": [_P, _P, _P, _I, _I, _P, _I, _P, _P, _I, _D, _D, _D, _I, _I],
    "bbh_nn_kl_per_weight": [_P, _P, _P, _P, _I, _I, _I, _D, _I, _I],
}


def _cache_dir() -> Path:
    return cache_dir()


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and, on Linux, the CPU model and feature flags."""
    lines = {platform.machine(), platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            lines.update(line for line in f if line.startswith(("model name", "flags", "Features")))
    except OSError:
        pass
    return "".join(sorted(lines))


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build() -> ctypes.CDLL:
    """Compile kernels.c (or reuse the cached build) and load it; raises RuntimeError on failure."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(source + " ".join([cc, *flags]).encode() + _cpu_signature().encode()).hexdigest()[:16]
        target = _cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            except OSError:  # an unwritable cache: build into a private temporary folder instead
                target = Path(tempfile.mkdtemp(prefix="bbh-")) / target.name
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                os.unlink(tmp)
                errors.append(f"{' '.join(cmd)}: {result.stderr.strip()[-500:]}")
                continue
            os.replace(tmp, target)  # atomic: a concurrent or killed build never leaves a half-written library
        lib = ctypes.CDLL(str(target))
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
        return lib
    raise RuntimeError("; ".join(errors))


_enabled = os.environ.get("BBH_NATIVE", "1") != "0"


def set_enabled(flag: bool) -> bool:
    """Turn the native kernels on or off for this process (e.g. to compare with the PyTorch path); returns
    the previous setting. The environment variable ``BBH_NATIVE=0`` starts a process with them off."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first call; None when disabled or unavailable (warns once)."""
    if not _enabled:
        return None
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build()
            except (RuntimeError, OSError) as err:
                warnings.warn(f"bbh's native CPU kernels are unavailable ({err}); using the slower PyTorch "
                              f"path", stacklevel=2)
                _state["lib"] = None
        return _state["lib"]  # type: ignore[return-value]


def usable(*tensors: Tensor, min_elements: int | None = None) -> bool:
    """Whether the kernels apply: CPU float32 tensors, the first with at least ``min_elements`` elements
    (default :data:`MIN_ELEMENTS`), and the kernels built."""
    if not tensors or tensors[0].numel() < (MIN_ELEMENTS if min_elements is None else min_elements):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return kernels() is not None


def _ranges(rows: int, align: int = 1, min_rows: int = 1) -> list[tuple[int, int]]:
    """[0, rows) in one range per thread (fewer when ranges would be under ``min_rows``), starts aligned."""
    parts = max(1, min(torch.get_num_threads(), rows // max(1, min_rows)))
    step = -(-rows // parts)
    step = -(-step // align) * align
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


def _pool() -> ThreadPoolExecutor:
    n = torch.get_num_threads()
    pool = _state.get("pool")
    if pool is None or _state.get("pool_size") != n:
        pool = _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="bbh-native")
        _state["pool_size"] = n
    return pool  # type: ignore[return-value]


def _parallel_rows(rows: int, fn, ranges: list[tuple[int, int]] | None = None) -> None:
    """Run ``fn(i, r0, r1)`` over a split of [0, rows) into one range per thread (or over ``ranges``)."""
    ranges = _ranges(rows) if ranges is None else ranges
    if len(ranges) == 1:
        fn(0, *ranges[0])
        return
    for future in [_pool().submit(fn, i, r0, r1) for i, (r0, r1) in enumerate(ranges)]:
        future.result()


def _contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _lib() -> ctypes.CDLL:
    """The kernels, or RuntimeError when they are off or could not be built (callers check :func:`usable`)."""
    lib = kernels()
    if lib is None:
        raise RuntimeError("bbh's native kernels are not available (disabled or not built); check usable() first")
    return lib


def _check_tensors(**tensors: Tensor | None) -> None:
    """TypeError unless every non-None argument is a CPU float32 tensor (what the C code reads)."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise TypeError(f"{name} must be a CPU float32 tensor, got {t.dtype} on {t.device}")
        if t.is_sparse or t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_2d(name: str, t: Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(t.shape)}")


def _check_in_place(**tensors: Tensor) -> None:
    """ValueError unless the tensors written in place are contiguous (the kernels assume row stride H)."""
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous")


def head_forward(weight: Tensor, h: Tensor, bias: Tensor | None) -> Tensor:
    """``h @ weight.T + bias`` for h [M, H] and weight [P, H], as a contiguous [M, P] tensor."""
    _check_tensors(weight=weight, h=h, bias=bias)
    _check_2d("weight", weight)
    _check_2d("h", h)
    if h.shape[1] != weight.shape[1]:
        raise ValueError(f"h [M, H] does not match weight [P, H]: {tuple(h.shape)} vs {tuple(weight.shape)}")
    if bias is not None:
        _check_shape("bias", bias, (weight.shape[0],))
    lib = _lib()
    weight, h = _contiguous(weight), _contiguous(h)
    bias = None if bias is None else _contiguous(bias)
    rows, cols = weight.shape
    out = torch.empty(h.shape[0], rows, dtype=weight.dtype)
    args = (weight.data_ptr(), h.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
            cols, h.shape[0], rows)
    _parallel_rows(rows, lambda i, r0, r1: lib.bbh_head_forward(*args, r0, r1))
    return out


def head_input_grad(dy: Tensor, weight: Tensor) -> Tensor:
    """``dy @ weight`` for dy [M, P] and weight [P, H]: per-thread partial sums over rows, then their sum."""
    _check_tensors(dy=dy, weight=weight)
    _check_2d("weight", weight)
    _check_2d("dy", dy)
    if dy.shape[1] != weight.shape[0]:
        raise ValueError(f"dy [M, P] does not match weight [P, H]: {tuple(dy.shape)} vs {tuple(weight.shape)}")
    lib = _lib()
    weight = _contiguous(weight)
    if dy.stride(1) != 1:
        dy = dy.contiguous()
    rows, cols = weight.shape
    ranges = _ranges(rows)
    partial = torch.zeros(len(ranges), dy.shape[0], cols, dtype=weight.dtype)
    args = (dy.data_ptr(), weight.data_ptr())
    _parallel_rows(rows, lambda i, r0, r1: lib.bbh_head_input_grad(
        *args, partial[i].data_ptr(), cols, dy.shape[0], dy.stride(0), r0, r1))
    return partial[0] if len(ranges) == 1 else partial.sum(0)


def _factors(factors: list[tuple[Tensor, Tensor]], rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """One (L [P, S], R [S, H]) pair from several: L's columns and R's rows concatenated (checked)."""
    if not factors:
        raise ValueError("no gradient factors given")
    for i, (left, right) in enumerate(factors):
        _check_tensors(**{f"factors[{i}][0]": left, f"factors[{i}][1]": right})
        _check_2d(f"factors[{i}][0]", left)
        _check_2d(f"factors[{i}][1]", right)
        if left.shape[0] != rows or right.shape[1] != cols or left.shape[1] != right.shape[0]:
            raise ValueError(f"factors[{i}] {tuple(left.shape)} @ {tuple(right.shape)} do not give a "
                             f"[{rows}, {cols}] gradient")
        if any(st < 0 for st in left.stride()):
            raise ValueError(f"factors[{i}][0] has a negative stride")
    if len(factors) == 1:
        left, right = factors[0]
    else:
        left = torch.cat([f[0] for f in factors], dim=1)
        right = torch.cat([f[1] for f in factors], dim=0)
    return left, _contiguous(right)


def factored_adam_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, factors: list[tuple[Tensor, Tensor]],
                   dense: Tensor | None, *, step: float, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """Adam update of ``param`` [P, H] in place with gradient ``sum L R (+ dense)`` (``torch.optim.Adam``'s
    formula: m <- m + (1-b1)(g-m), v <- b2 v + (1-b2) g^2, p <- p - lr/(1-b1^t) m / (sqrt(v/(1-b2^t)) + eps))."""
    _check_tensors(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, dense=dense)
    _check_2d("param", param)
    rows, cols = param.shape
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("dense", dense)):
        if t is not None:
            _check_shape(name, t, (rows, cols))
    _check_in_place(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    left, right = _factors(factors, rows, cols)
    lib = _lib()
    dense = None if dense is None else _contiguous(dense)
    buffers = torch.empty(len(_ranges(rows)), cols, dtype=param.dtype)
    step_size = lr / (1 - beta1**step)
    bc2_sqrt = (1 - beta2**step) ** 0.5
    args = (param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), left.data_ptr(), left.stride(0),
            left.stride(1), right.data_ptr(), right.shape[0], None if dense is None else dense.data_ptr())
    _parallel_rows(rows, lambda i, r0, r1: lib.bbh_factored_adam(
        *args, buffers[i].data_ptr(), cols, beta1, beta2, eps, step_size, bc2_sqrt, r0, r1))


def factored_rmsprop_tf_(param: Tensor, square_avg: Tensor, factors: list[tuple[Tensor, Tensor]],
                         dense: Tensor | None, *, lr: float, decay: float, eps: float) -> None:
    """RMSProp-TF update in place: v <- decay v + (1-decay) g^2, p <- p - lr g / sqrt(v + eps)."""
    _check_tensors(param=param, square_avg=square_avg, dense=dense)
    _check_2d("param", param)
    rows, cols = param.shape
    for name, t in (("square_avg", square_avg), ("dense", dense)):
        if t is not None:
            _check_shape(name, t, (rows, cols))
    _check_in_place(param=param, square_avg=square_avg)
    left, right = _factors(factors, rows, cols)
    lib = _lib()
    dense = None if dense is None else _contiguous(dense)
    buffers = torch.empty(len(_ranges(rows)), cols, dtype=param.dtype)
    args = (param.data_ptr(), square_avg.data_ptr(), left.data_ptr(), left.stride(0), left.stride(1),
            right.data_ptr(), right.shape[0], None if dense is None else dense.data_ptr())
    _parallel_rows(rows, lambda i, r0, r1: lib.bbh_factored_rmsprop_tf(
        *args, buffers[i].data_ptr(), cols, lr, decay, eps, r0, r1))


def nn_kl_per_weight(q: Tensor, p: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Value (without the 1/n and the constant) and gradient of the per-weight nearest-neighbour KL, as
    ``bbh.kl._per_weight_value_and_grad``: 16 weights at a time in vector registers, columns over threads."""
    _check_tensors(q=q, p=p)
    _check_2d("q", q)
    _check_2d("p", p)
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"q [n, D] and p [m, D] need the same D, got {tuple(q.shape)} and {tuple(p.shape)}")
    if q.shape[0] < 2 or p.shape[0] < 1:
        raise ValueError(f"need n >= 2 posterior and m >= 1 prior samples, got n={q.shape[0]}, m={p.shape[0]}")
    lib = _lib()
    q, p = _contiguous(q), _contiguous(p)
    n, d = q.shape
    grad = torch.empty_like(q)
    ranges = _ranges(d, align=16, min_rows=1 << 14)
    values = (ctypes.c_double * len(ranges))()
    _parallel_rows(d, lambda i, c0, c1: lib.bbh_nn_kl_per_weight(
        q.data_ptr(), p.data_ptr(), grad.data_ptr(), ctypes.byref(values, i * ctypes.sizeof(ctypes.c_double)),
        n, p.shape[0], d, eps, c0, c1), ranges)
    return torch.tensor(sum(values) / n, dtype=q.dtype), grad
