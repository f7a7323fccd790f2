"""Compiled tile transforms for the CPU Winograd convolution (``winograd_kernels.c``).

Written with PyTorch ops, the F(4x4, 3x3) input and output transforms are tall, skinny
matrix products plus gathers and permuting copies: several passes over tensors of up to
150 MB, at a fraction of the memory bandwidth (bench/results/winograd.json). The C kernels
do each transform in one pass per tile row, vectorised across tiles: 3-5x faster.

The source (about 300 lines of plain C99, no PyTorch headers) is compiled at first use
with the system C compiler (``$CC``, else ``cc``) and ``-O3 -march=native`` in under a
second, and cached in ``$SASAN_CACHE_DIR`` (default ``~/.cache/sasan``) under a name that
hashes the source, the compiler and the CPU, so a shared home directory holds one build per
kind of machine. Without a working compiler, or with ``SASAN_WINOGRAD_KERNELS=0``, the
caller falls back to the PyTorch-op transforms (same results up to float rounding).
Only fp32 CPU tensors use them; CUDA never does.

The same library holds one kernel that is not a Winograd transform: ``correlate_few``, the
input gradient of a convolution with at most 8 input channels, vectorised along image rows
(sasan/models/few_channel.py; AVX-512 builds only, else nn.Conv2d's own gradient is used).
``SASAN_WINOGRAD_KERNELS=0`` turns it off too.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("winograd_kernels.c")
ABI_VERSION = 5
# outputs larger than this are written with non-temporal stores (about half a typical
# last-level cache: smaller ones are read back by the next matrix product from the cache)
STREAM_BYTES = 16 << 20
_L, _P = ctypes.c_long, ctypes.c_void_p
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and feature flags (Linux), else the
    platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            keep = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def cache_dir() -> Path:
    root = os.environ.get("SASAN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sasan"


def _compile(cc: list[str], out: Path) -> Optional[str]:
    """Build the shared library at ``out`` (atomically); return None or the error text."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as e:            # read-only home, full disk
        return f"cache {out.parent}: {e}"
    err = ""
    try:
        for arch in (["-march=native"], []):     # some compilers (Apple clang on arm64) lack it
            cmd = [*cc, "-O3", *arch, "-std=c99", "-shared", "-fPIC", "-o", tmp, str(SOURCE)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                os.replace(tmp, out)
                return None
            err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        return err
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> Optional[ctypes.CDLL]:
    if os.environ.get("SASAN_WINOGRAD_KERNELS", "1").lower() in ("0", "false", "no", "off"):
        return None
    cc = shlex.split(os.environ.get("CC", "cc"))
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(cc).encode() + _cpu_id().encode()
                         + platform.machine().encode()).hexdigest()[:16]
    path = cache_dir() / f"winograd_kernels_{key}.so"
    if not path.exists():
        err = _compile(cc, path)
        if err is not None:
            log.warning("Winograd C kernels not built (%s: %s); using the PyTorch-op transforms",
                        " ".join(cc), err)
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("Winograd C kernels not loaded (%s); using the PyTorch-op transforms", e)
        return None
    if lib.wino_abi_version() != ABI_VERSION:
        log.warning("Winograd C kernels: %s has ABI %d, expected %d; using the PyTorch-op transforms",
                    path, lib.wino_abi_version(), ABI_VERSION)
        return None
    for name in ("wino_in", "wino_in_t", "wino_out_t"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [_P, _P, _L, _L, _L, _L, _L, _L, _L, _L, ctypes.c_int], ctypes.c_int
    lib.wino_out.argtypes, lib.wino_out.restype = [_P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _L, ctypes.c_int], ctypes.c_int
    lib.corr_few.argtypes, lib.corr_few.restype = [_P, _P, _P] + [_L] * 9, ctypes.c_int
    lib.corr_available.argtypes, lib.corr_available.restype = [], ctypes.c_int
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None where they cannot be built (built once per process)."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    return library() is not None


def _reset() -> None:
    """Forget the loaded library (tests switch SASAN_WINOGRAD_KERNELS)."""
    with _lock:
        _state.clear()


def _pool(n: int) -> ThreadPoolExecutor:
    pool = _state.get("pool")
    if pool is None or pool._max_workers != n:  # type: ignore[attr-defined]
        if pool is not None:                      # torch's thread count changed
            pool.shutdown(wait=False)  # type: ignore[attr-defined]
        pool = _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="sasan-winograd")
    return pool  # type: ignore[return-value]


def _run(fn, planes: int, before: tuple, after: tuple) -> None:
    """fn(*before, planes, p0, p1, *after) over [0, planes), split across torch's CPU threads:
    the calling thread takes the first part, pool threads the others (ctypes releases the
    GIL, so the parts run in parallel)."""
    n = max(1, min(torch.get_num_threads(), planes))
    step = -(-planes // n)
    starts = list(range(0, planes, step))
    futures = [_pool(len(starts) - 1).submit(fn, *before, planes, a, min(planes, a + step), *after)
               for a in starts[1:]] if len(starts) > 1 else []
    codes = [fn(*before, planes, 0, min(planes, step), *after)] + [f.result() for f in futures]
    if any(codes):
        raise MemoryError("Winograd C kernel: out of memory for its row buffers")


def _tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // 4), -(-w // 4)


def _nt(t: Tensor) -> int:
    return int(t.numel() * t.element_size() > STREAM_BYTES)


def _check(t: Tensor) -> None:
    if t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous():
        raise ValueError("Winograd C kernels take contiguous fp32 CPU tensors")


def _to_tiles(fn, planes: Tensor, ptr_bias: tuple = (), out: Optional[Tensor] = None) -> Tensor:
    """Run a planes -> tiles kernel: (N, C, H, W) -> (36, C, N, T), T = ceil(H/4) * ceil(W/4)."""
    _check(planes)
    n, c, h, w = planes.shape
    th, tw = _tiles(h, w)
    tiles = planes.new_empty(36, c, n, th * tw) if out is None else out.view(36, c, n, th * tw)
    _run(fn, n * c, (planes.data_ptr(), *ptr_bias, tiles.data_ptr()), (c, h, w, th, tw, _nt(tiles)))
    return tiles


def _to_planes(fn, tiles: Tensor, shape: tuple[int, int, int, int], ptr_bias: tuple = ()) -> Tensor:
    """Run a tiles -> planes kernel: (36, C, N, T) -> (N, C, H, W) = ``shape``."""
    _check(tiles)
    n, c, h, w = shape
    th, tw = _tiles(h, w)
    planes = tiles.new_empty(n, c, h, w)
    _run(fn, n * c, (tiles.data_ptr(), *ptr_bias, planes.data_ptr()), (c, h, w, th, tw, _nt(planes)))
    return planes


def input_transform(x: Tensor) -> Tensor:
    """x (N, C, H, W) -> V (36, C, N, T), T = ceil(H/4) * ceil(W/4): B^T d B per 6x6 tile.
    Channels before images, so that one GEMM per position p covers the whole batch."""
    return _to_tiles(library().wino_in, x)


def input_transform_t(dv: Tensor, shape: torch.Size) -> Tensor:
    """Transpose of ``input_transform``: dV (36, C, N, T) -> dx (N, C, H, W)."""
    return _to_planes(library().wino_in_t, dv, tuple(shape))


def output_transform(m: Tensor, bias: Optional[Tensor], shape: tuple[int, int, int, int]) -> Tensor:
    """M (36, K, N, T) -> y (N, K, H, W) = A^T M A per tile (+ bias per channel)."""
    b = bias.detach().to(torch.float32).contiguous() if bias is not None else None
    return _to_planes(library().wino_out, m, shape, (b.data_ptr() if b is not None else None,))


def output_transform_t(dy: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Transpose of ``output_transform`` (without the bias): dy (N, K, H, W) -> dM (36, K, N, T),
    into ``out`` (any tensor with that many elements) when given."""
    return _to_tiles(library().wino_out_t, dy, out=out)


# ---------------------------------------------------------------- few-channel correlation
def correlation_available() -> bool:
    """Whether the library has the few-output-channel correlation (AVX-512 builds only)."""
    lib = library()
    return lib is not None and bool(lib.corr_available())


def correlate_few(g: Tensor, w: Tensor, pad: int) -> Tensor:
    """out[n, c, y, x] = sum_{o, a, b} w[o, a, b, c] * g[n, o, y + a - pad, x + b - pad]
    (zero outside g): g (N, O, H, W), w (O, k, k, C) with C <= 8 -> (N, C, H + 2 pad - k + 1,
    W + 2 pad - k + 1). The input gradient of a stride-1 convolution with C input channels
    (``conv_input_grad``)."""
    _check(g)
    _check(w)
    n, o, h, wd = g.shape
    o2, k, k2, c = w.shape
    if o2 != o or k2 != k or not 1 <= c <= 8 or not 0 <= pad < k:
        raise ValueError(f"correlate_few: g {tuple(g.shape)}, w {tuple(w.shape)}, pad {pad}")
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = g.new_empty(n, c, ho, wo)
    _run(library().corr_few, n * ho, (g.data_ptr(), w.data_ptr(), out.data_ptr()), (c, o, h, wd, k, pad))
    return out


def conv_input_grad(dy: Tensor, weight: Tensor, padding: int) -> Tensor:
    """Gradient of F.conv2d(x, weight, padding=padding) (stride 1) with respect to x, for a
    weight (O, C, k, k) with C <= 8: dy (N, O, H', W') -> (N, C, H, W)."""
    k = weight.shape[-1]
    w = weight.detach().flip(2, 3).permute(0, 2, 3, 1).contiguous()      # (O, k, k, C)
    return correlate_few(dy.contiguous(), w, k - 1 - padding)
