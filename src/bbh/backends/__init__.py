"""Low-level backends of bbh's hot paths; depends on torch (and :mod:`bbh.io` for the build cache) only.

* :mod:`bbh.backends.ops` — the one seam: hypernet head forward and input gradient, the factored Adam and
  RMSProp-TF updates, the per-weight nearest-neighbour KL; each runs the native kernel where it applies and
  its PyTorch implementation otherwise. The rest of bbh calls these, never :mod:`~bbh.backends.native`.
* :mod:`bbh.backends.native` — the optional C kernels (``kernels.c``, built on first use, loaded with
  ctypes); ``native.set_enabled(False)`` or ``BBH_NATIVE=0`` switch them off.
* :mod:`bbh.backends.factored` — where low-rank weight gradients are collected during an optimizer's own
  backward pass (``with collecting(collector): loss.backward()``); outside it every layer returns dense
  gradients as PyTorch expects.
"""

from . import factored, native, ops

__all__ = ["factored", "native", "ops"]
