"""3x3 convolution by Winograd minimal filtering, F(m x m, 3 x 3) (Lavin & Gray 2016).

A 3x3, stride-1, padding-1 convolution is computed on overlapping input tiles of
a x a pixels (a = m + 2, consecutive tiles m apart), each giving an m x m output tile:

    Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A        (.) elementwise, per (c_in -> c_out)

Summed over input channels, the elementwise product becomes, for every one of the a*a
transformed positions p, one matrix product  M_p (C_out x tiles) = U_p (C_out x C_in) @
V_p (C_in x tiles)  with  U = G w G^T  and  V = B^T d B.  For m = 4 this does 36 multiplies
per output tile and channel pair instead of 16 * 9 = 144 (4x fewer flops); m = 2 does 16
(2.25x fewer).  Matrices (Toom-Cook, interpolation points 0, 1, -1, 2, -2, infinity):

    F(4x4, 3x3):                                      F(2x2, 3x3) (points 0, 1, -1, inf):
    B^T = [ 4  0 -5  0  1  0 ]   G = [ 1/4    0     0  ]      B^T = [ 1  0 -1  0 ]
          [ 0 -4 -4  1  1  0 ]       [-1/6 -1/6 -1/6 ]            [ 0  1  1  0 ]
          [ 0  4 -4 -1  1  0 ]       [-1/6  1/6 -1/6 ]            [ 0 -1  1  0 ]
          [ 0 -2 -1  2  1  0 ]       [1/24 1/12  1/6 ]            [ 0  1  0 -1 ]
          [ 0  2 -1 -2  1  0 ]       [1/24 -1/12 1/6 ]        G   = [ 1    0    0  ]
          [ 0  4  0 -5  0  1 ]       [  0    0    1  ]            [ 1/2  1/2  1/2 ]
    A^T = [ 1  1  1  1  1  0 ]                                    [ 1/2 -1/2  1/2 ]
          [ 0  1 -1  2 -2  0 ]                                    [ 0    0    1  ]
          [ 0  1  1  4  4  0 ]                                A^T = [ 1  1  1  0 ]
          [ 0  1 -1  8 -8  1 ]                                      [ 0  1 -1 -1 ]

Forward and backward are written by hand in an autograd.Function, so no intermediate of
the transforms is kept besides V.  The tile transforms have two implementations:

* C (sasan/models/winograd_kernels.c, F(4x4, 3x3), fp32 CPU; the default where a C compiler
  is found): one vectorised pass per tile row; V and M laid out (a*a, C, N, tiles), so
  one GEMM per position covers the batch.  3-5x faster than the PyTorch-op transforms.
* PyTorch ops (every m, and the fallback), as follows:

* input transform, separable: rows first (gather the a rows of every tile row, one small
  GEMM with B^T), then columns.  The column step needs no gather: with the padded width a
  multiple of m, the a-wide windows are "m columns of this tile + the first a-m columns
  of the next tile", i.e. two GEMMs on plain strided views (this adds one dummy tile per
  tile row, computed and discarded).
* one bmm over (position p, image):  M_p = U_p @ V_p, M laid out (a*a, N, C_out, tiles).
* output transform: one GEMM  M^T @ (A^T (x) A^T)^T  (Kronecker, a*a -> m*m per tile), then
  a permuting copy (fused with the bias add) into a contiguous (N, C_out, H, W).
* large scratch tensors (everything but V, the output and the gradients) are reused
  across calls, per thread (clear_workspace() frees them): fresh multi-MB allocations
  cost page faults that otherwise take a large share of the time.
Backward is the transpose of each step: grad_V = U_p^T grad_M_p, grad_U = grad_M_p V_p^T,
grad_x = transposed input transform (overlap-add), grad_w = G^T grad_U G.  Memory: V, kept
for the backward, is (a/m)^2 (2.25x for m = 4) the input's size, instead of the input.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasan.models import winograd_kernels as _kernels
from sasan.models.blocks import as_subclass

_F43 = (
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)
_F23 = (
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    [[1, 1, 1, 0], [0, 1, -1, -1]],
)
_F63 = (  # points 0, 1, -1, 2, -2, 1/2, -1/2, infinity
    [[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0], [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
     [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0], [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
     [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0], [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
     [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0], [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]],
    [[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9], [1 / 90, 1 / 45, 2 / 45],
     [1 / 90, -1 / 45, 2 / 45], [32 / 45, 16 / 45, 8 / 45], [32 / 45, -16 / 45, 8 / 45], [0, 0, 1]],
    [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0], [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
     [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 0], [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 0],
     [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1]],
)
_MATRICES = {6: _F63, 4: _F43, 2: _F23}
# Below these (min(C_in, C_out), C_in * C_out, min(H, W)) nn.Conv2d was as fast or faster
# for forward + backward in bench/winograd.py (fp32 CPU): the transforms cost O(C_in + C_out)
# per tile, the GEMM saves O(C_in * C_out).
MIN_CHANNELS = 32
MIN_PRODUCT = 2048
MIN_SIZE = 64
_cache: dict[tuple, tuple[Tensor, ...]] = {}


def winograd_matrices(m: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """(B^T (a x a), G (a x 3), A^T (m x a)) for F(m x m, 3 x 3), m in {2, 4}."""
    bt, g, at = _MATRICES[m]
    return (torch.tensor(bt, dtype=torch.float64).to(device, dtype),
            torch.tensor(g, dtype=torch.float64).to(device, dtype),
            torch.tensor(at, dtype=torch.float64).to(device, dtype))


def _consts(m: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    key = (m, dtype, device)
    if key not in _cache:
        bt, g, at = (t.double() for t in winograd_matrices(m))
        gk = torch.kron(g, g)        # (a*a, 9):  vec(G w G^T) = gk @ vec(w)
        # (m*m, a*a): output (row, col) of the tile from M at p = col * a + row
        ak = torch.kron(at, at).view(m, m, -1).transpose(0, 1).reshape(m * m, -1)
        _cache[key] = tuple(t.to(device, dtype).contiguous() for t in (bt, gk, ak))
    return _cache[key]


_workspace = threading.local()


def _buffer(slot: str, numel: int, like: Tensor) -> Tensor:
    """Flat scratch tensor reused across calls (per thread): fresh multi-MB allocations
    cost page faults that are a large part of the runtime otherwise."""
    bufs = _workspace.__dict__.setdefault("bufs", {})
    key = (slot, like.dtype, like.device)
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        bufs[key] = buf = like.new_empty(numel)
    return buf[:numel]


def clear_workspace() -> None:
    """Free this thread's scratch buffers."""
    _workspace.__dict__.pop("bufs", None)


def _filter_transform(w: Tensor, gk: Tensor) -> Tensor:
    """w (K, C, 3, 3) -> U (a*a, K, C), position p = column * a + row (as V)."""
    k, c = w.shape[:2]
    return (gk @ w.transpose(2, 3).reshape(k * c, 9).t()).view(-1, k, c)


def _row_ranges(a: int, m: int, th: int, h: int):
    """For window row i: tile rows lo..hi-1 read image row m*ti + i - 1 (inside the image)."""
    for i in range(a):
        lo = 1 if i == 0 else 0
        yield i, lo, max(lo, min(th, (h - i) // m + 1))


def _input_transform(x: Tensor, bt: Tensor, m: int, th: int, tw: int) -> Tensor:
    """x (N, C, H, W) -> V (a*a, N, C, th*(tw+1)), a new tensor; p = column * a + row."""
    n, c, h, w = x.shape
    a = bt.shape[0]
    wq = m * (tw + 1)                      # padded width: a multiple of m
    # rows: g[i, n, c, ti, 1 + col] = x[n, c, m*ti + i - 1, col]  (zero outside)
    g = _buffer("a", a * n * c * th * wq, x).view(a, n, c, th, wq)
    g[..., 0] = 0
    g[..., w + 1:] = 0
    for i, lo, hi in _row_ranges(a, m, th, h):
        g[i, :, :, :lo] = 0
        g[i, :, :, hi:] = 0
        if hi > lo:
            g[i, :, :, lo:hi, 1:w + 1] = x[:, :, m * lo + i - 1: m * (hi - 1) + i: m]
    rows = a * n * c * th * (tw + 1)
    z = _buffer("b", rows * m + m, x)                  # one spare row for the shifted view
    z[rows * m:].zero_()
    torch.mm(bt, g.view(a, -1), out=z[:rows * m].view(a, -1))
    # columns: window of tile j = cols m*j .. m*j+m-1 (row j of zm) + first a-m cols of row j+1
    zm = z.view(rows + 1, m)
    v = torch.mm(bt[:, :m], zm[:rows].t())
    v.addmm_(bt[:, m:], zm[1:, : a - m].t())
    return v.view(a * a, n, c, th * (tw + 1))


def _input_transform_t(dv: Tensor, bt: Tensor, m: int, th: int, tw: int,
                       shape: torch.Size) -> Tensor:
    """Transpose of _input_transform: dV (a*a, N, C, T') -> dx (N, C, H, W)."""
    n, c, h, w = shape
    a = bt.shape[0]
    rows = a * n * c * th * (tw + 1)
    dvm = dv.reshape(a, rows)
    dz = _buffer("a", rows * m + m, dv).view(rows + 1, m)
    torch.mm(dvm.t(), bt[:, :m], out=dz[:rows])
    dz[rows:].zero_()
    dz[1:, : a - m].addmm_(dvm.t(), bt[:, m:])
    dg = _buffer("c", rows * m, dv).view(a, -1)
    torch.mm(bt.t(), dz[:rows].view(a, -1), out=dg)
    dg = dg.view(a, n, c, th, m * (tw + 1))
    # overlap-add: window rows 0..m-1 of all tiles cover image rows 0 .. m*th - 2 once
    # (assign), rows m..a-1 overlap the next tile (add)
    dx = dv.new_empty(n, c, h, w)
    dx[:, :, m * th - 1:] = 0
    for i, lo, hi in _row_ranges(a, m, th, h):
        if hi > lo:
            dst = dx[:, :, m * lo + i - 1: m * (hi - 1) + i: m]
            src = dg[i, :, :, lo:hi, 1:w + 1]
            if i < m:
                dst.copy_(src)
            else:
                dst += src
    return dx


def _batched(u: Tensor, n: int) -> Tensor:
    """(P, R, S) -> (P * n, R, S): each matrix repeated n times (for one bmm over P and N)."""
    return u.unsqueeze(1).expand(-1, n, -1, -1).reshape(-1, *u.shape[1:])


class _WinogradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, m: int, compiled: bool) -> Tensor:
        n, c, h, w = x.shape
        k = weight.shape[0]
        th, tw = -(-h // m), -(-w // m)
        bt, gk, ak = _consts(m, x.dtype, x.device)
        x = x.contiguous()
        u = _filter_transform(weight, gk)                          # (P, K, C)
        ctx.m, ctx.shape, ctx.has_bias = m, x.shape, bias is not None
        ctx.compiled = compiled
        if ctx.compiled:   # the C transforms: no dummy tile column, one GEMM per position
            t = th * tw
            v = _kernels.input_transform(x)                            # (P, C, N, T)
            p_ = v.shape[0]
            mm = _buffer("m", p_ * k * n * t, x).view(p_, k, n * t)
            torch.bmm(u, v.view(p_, c, n * t), out=mm)                 # (P, K, N, T)
            ctx.save_for_backward(u, v)
            return _kernels.output_transform(mm, bias, (n, k, h, w))
        t1 = th * (tw + 1)
        v = _input_transform(x, bt, m, th, tw)                     # (P, N, C, T')
        p_ = v.shape[0]
        mm = _buffer("c", p_ * n * k * t1, x).view(p_ * n, k, t1)
        torch.bmm(_batched(u, n), v.view(p_ * n, c, t1), out=mm)    # (P, N, K, T')
        yt = _buffer("a", n * k * t1 * m * m, x).view(-1, m * m)
        torch.mm(mm.view(p_, -1).t(), ak.t(), out=yt)              # (N, K, th, tw+1, row, col)
        y = yt.view(n, k, th, tw + 1, m, m)[:, :, :, :tw].permute(0, 1, 2, 4, 3, 5)
        out = x.new_empty(n, k, th, m, tw, m)
        if bias is not None:
            torch.add(y, bias.view(1, k, 1, 1, 1, 1), out=out)
        else:
            out.copy_(y)
        out = out.view(n, k, th * m, tw * m)
        if th * m != h or tw * m != w:
            out = out[:, :, :h, :w].contiguous()
        ctx.save_for_backward(u, v)
        return out

    @staticmethod
    def backward(ctx, dy: Tensor):
        u, v = ctx.saved_tensors
        m = ctx.m
        n, c, h, w = ctx.shape
        p_, k = u.shape[:2]
        th, tw = -(-h // m), -(-w // m)
        bt, gk, ak = _consts(m, dy.dtype, dy.device)
        if ctx.compiled:
            return _backward_compiled(ctx, dy.contiguous(), u, v, gk)
        t1 = th * (tw + 1)
        # transposed output transform: tiles of dY (dummy tile column zero), then ak^T
        dt = _buffer("a", n * k * t1 * m * m, dy).view(n, k, th, tw + 1, m, m)
        dt[:, :, :, tw:] = 0
        dyp = dy if (th * m == h and tw * m == w) else F.pad(dy, (0, tw * m - w, 0, th * m - h))
        dt[:, :, :, :tw] = dyp.reshape(n, k, th, m, tw, m).permute(0, 1, 2, 4, 3, 5)
        dm = _buffer("c", p_ * n * k * t1, dy).view(p_, n, k, t1)
        torch.mm(ak.t(), dt.view(-1, m * m).t(), out=dm.view(p_, -1))
        dx = dw = db = None
        if ctx.needs_input_grad[1]:
            du = torch.bmm(dm[:, 0], v[:, 0].transpose(1, 2))           # (P, K, C)
            for i in range(1, n):
                du.baddbmm_(dm[:, i], v[:, i].transpose(1, 2))
            dw = (gk.t() @ du.view(p_, -1)).t().reshape(k, c, 3, 3).transpose(2, 3).contiguous()
        if ctx.needs_input_grad[0]:
            dv = _buffer("b", p_ * n * c * t1, dy).view(p_ * n, c, t1)
            torch.bmm(_batched(u.transpose(1, 2), n), dm.view(p_ * n, k, t1), out=dv)
            dx = _input_transform_t(dv.view(p_, n, c, t1), bt, m, th, tw, ctx.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None, None


def _compiled_ok(x: Tensor, m: int) -> bool:
    return m == 4 and x.dtype == torch.float32 and x.is_cpu and _kernels.available()


def _backward_compiled(ctx, dy: Tensor, u: Tensor, v: Tensor, gk: Tensor):
    """Backward with the C transforms; V is (P, C, N, T) here, dM (P, K, N, T)."""
    n, c, h, w = ctx.shape
    p_, k = u.shape[:2]
    nt = v.shape[2] * v.shape[3]
    dm = _kernels.output_transform_t(dy, out=_buffer("m", p_ * k * nt, dy)).view(p_, k, nt)
    dx = dw = db = None
    if ctx.needs_input_grad[1]:
        du = torch.bmm(dm, v.view(p_, c, nt).transpose(1, 2))          # (P, K, C)
        dw = (gk.t() @ du.view(p_, -1)).t().reshape(k, c, 3, 3).transpose(2, 3).contiguous()
    if ctx.needs_input_grad[0]:
        dv = _buffer("dv", p_ * c * nt, dy).view(p_, c, nt)
        torch.bmm(u.transpose(1, 2), dm, out=dv)                       # (P, C, N, T)
        dx = _kernels.input_transform_t(dv.view(p_, c, n, -1), ctx.shape)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = dy.sum((0, 2, 3))
    return dx, dw, db, None, None


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, m: int = 4,
                     compiled: bool | None = None) -> Tensor:
    """Same as F.conv2d(x, weight, bias, padding=1) for a (K, C, 3, 3) weight, via F(m, 3).

    ``compiled``: tile transforms in C (sasan/models/winograd_kernels.py; F(4x4, 3x3), fp32
    CPU) or with PyTorch ops; None = C where it is available."""
    if compiled is None:
        compiled = _compiled_ok(x, m)
    elif compiled and not _compiled_ok(x, m):
        raise RuntimeError("Winograd C kernels requested but unavailable for this input "
                           "(F(4x4,3x3), fp32 CPU, and a C compiler are needed)")
    return _WinogradFn.apply(x, weight, bias, m, compiled)


class WinogradConv2d(nn.Conv2d):
    """nn.Conv2d whose 3x3 / stride 1 / padding 1 case runs through Winograd F(m x m, 3 x 3).

    Same parameters and state dict as nn.Conv2d; every other configuration, and inputs
    that are too small or have too few channels to gain, use nn.Conv2d's own forward.
    """

    def __init__(self, *args, m: int = 4, min_channels: int = MIN_CHANNELS,
                 min_product: int = MIN_PRODUCT, min_size: int = MIN_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.m, self.min_size = m, min_size
        self.winograd_ok = _eligible(self, min_channels, min_product)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # nn.Conv2d.forward calls this with the module's own weight; callers that fold other
        # linear maps into the weight (SASANResBlock) call it with theirs.
        if (self.winograd_ok and x.dim() == 4 and x.dtype == torch.float32 and x.is_cpu
                and x.shape[-1] >= self.min_size and x.shape[-2] >= self.min_size):
            return winograd_conv3x3(x, weight, bias, self.m)
        return super()._conv_forward(x, weight, bias)


def _eligible(conv: nn.Conv2d, min_channels: int, min_product: int) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding == (1, 1) and conv.padding_mode == "zeros"
            and min(conv.in_channels, conv.out_channels) >= min_channels
            and conv.in_channels * conv.out_channels >= min_product)


def winograd_convs(module: nn.Module, min_channels: int = MIN_CHANNELS, m: int = 4,
                   min_size: int = MIN_SIZE, min_product: int = MIN_PRODUCT) -> int:
    """Replace, in place, every nn.Conv2d below `module` that is 3x3 / stride 1 / padding 1 /
    groups 1 with min(C_in, C_out) >= min_channels and C_in * C_out >= min_product by a
    WinogradConv2d sharing its Parameter
    objects (optimizers and state dicts are unaffected); return how many were replaced.
    The new modules still use nn.Conv2d's path for inputs smaller than min_size."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d and _eligible(child, min_channels, min_product):
            new = as_subclass(child, WinogradConv2d)
            new.m, new.min_size = m, min_size
            new.winograd_ok = True
            setattr(module, name, new)
            count += 1
        else:
            count += winograd_convs(child, min_channels, m, min_size, min_product)
    return count
