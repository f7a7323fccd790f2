"""The compiled Winograd tile transforms (sasan/models/winograd_kernels.c): each against a
float64 reference, the transposes by the adjoint identity, thread splitting, non-temporal
stores, the build cache and the fallback when no compiler works."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from sasan.models import winograd_kernels as K
from sasan.models.winograd import winograd_conv3x3, winograd_matrices

needs_kernels = pytest.mark.skipif(not K.available(), reason="no working C compiler here")

SHAPES = [(1, 1, 4, 4), (2, 3, 8, 8), (1, 2, 10, 13), (2, 3, 7, 5), (1, 4, 1, 6), (3, 5, 33, 64)]


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, th, tw, 6, 6) overlapping input tiles, zero padded, float64."""
    n, c, h, w = x.shape
    th, tw = -(-h // 4), -(-w // 4)
    xp = F.pad(x.double(), (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
    return xp.unfold(2, 6, 4).unfold(3, 6, 4)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() * b.double()).sum().item()


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
def test_input_transform_is_bt_d_b_per_tile(shape):
    n, c, h, w = shape
    bt = winograd_matrices(4)[0].double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    v = K.input_transform(x)
    th, tw = -(-h // 4), -(-w // 4)
    # position p = column * 6 + row
    ref = torch.einsum("ij,nctujl,ql->qicntu", bt, _tiles(x), bt).reshape(36, c, n, th * tw)
    assert v.shape == ref.shape
    assert (v.double() - ref).abs().max() < 1e-4 * ref.abs().max()


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
def test_output_transform_is_at_m_a_plus_bias(shape):
    n, k, h, w = shape
    at = winograd_matrices(4)[2].double()
    th, tw = -(-h // 4), -(-w // 4)
    gen = torch.Generator().manual_seed(2)
    m = torch.randn(36, k, n, th * tw, generator=gen)
    bias = torch.randn(k, generator=gen)
    y = K.output_transform(m, bias, (n, k, h, w))
    mm = m.double().view(6, 6, k, n, th, tw)                # (column q, row i, ...)
    ref = torch.einsum("ri,qikntu,cq->nktruc", at, mm, at).reshape(n, k, 4 * th, 4 * tw)
    ref = ref[:, :, :h, :w] + bias.double().view(1, k, 1, 1)
    assert y.shape == (n, k, h, w) and y.is_contiguous()
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    assert torch.equal(K.output_transform(m, None, (n, k, h, w)) + bias.view(1, k, 1, 1), y)


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
def test_transposes_are_adjoints(shape):
    """<T(x), g> = <x, T^t(g)> for both transforms: the backward pass is their transpose."""
    n, c, h, w = shape
    th, tw = -(-h // 4), -(-w // 4)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    dv = torch.randn(36, c, n, th * tw, generator=gen)
    lhs, rhs = _inner(K.input_transform(x), dv), _inner(x, K.input_transform_t(dv, x.shape))
    assert abs(lhs - rhs) < 1e-4 * (1 + abs(lhs))
    m = torch.randn(36, c, n, th * tw, generator=gen)
    dy = torch.randn(shape, generator=gen)
    lhs, rhs = _inner(K.output_transform(m, None, shape), dy), _inner(m, K.output_transform_t(dy))
    assert abs(lhs - rhs) < 1e-4 * (1 + abs(lhs))


@needs_kernels
def test_threads_and_streaming_stores_give_identical_results(monkeypatch):
    x = torch.randn(3, 5, 36, 44)
    dy = torch.randn(3, 5, 36, 44)
    before = torch.get_num_threads()

    def run():
        v = K.input_transform(x)
        return v, K.input_transform_t(v, x.shape), K.output_transform(v, None, x.shape), \
            K.output_transform_t(dy)

    try:
        torch.set_num_threads(1)
        ref = run()
        torch.set_num_threads(2)                                    # planes split across 2 threads
        two = run()
        monkeypatch.setattr(K, "STREAM_BYTES", 0)                   # every output streamed
        streamed = run()
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(ref, two, streamed):
        assert torch.equal(a, b) and torch.equal(a, c)


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_conv_with_c_transforms_matches_torch_transforms_and_conv2d(bias):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 19, 24, generator=gen, requires_grad=True)
    weight = torch.randn(7, 6, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(7, generator=gen, requires_grad=True) if bias else None
    inputs = (x, weight, b) if bias else (x, weight)
    g = torch.randn(2, 7, 19, 24, generator=gen)
    results = {}
    for name, fn in {"c": lambda: winograd_conv3x3(x, weight, b, 4, compiled=True),
                     "torch": lambda: winograd_conv3x3(x, weight, b, 4, compiled=False),
                     "conv2d": lambda: F.conv2d(x, weight, b, padding=1)}.items():
        y = fn()
        results[name] = (y, *torch.autograd.grad(y, inputs, g))
    for got, want in zip(results["c"], results["conv2d"]):
        assert (got - want).abs().max() < 1e-4 * want.abs().max()
    for got, want in zip(results["c"], results["torch"]):
        assert (got - want).abs().max() < 1e-5 * want.abs().max()


def test_disabled_by_environment_falls_back(monkeypatch):
    monkeypatch.setenv("SASAN_WINOGRAD_KERNELS", "0")
    K._reset()
    try:
        assert not K.available()
        x, weight = torch.randn(1, 4, 8, 8), torch.randn(5, 4, 3, 3)
        y = winograd_conv3x3(x, weight)                                    # PyTorch-op transforms
        ref = F.conv2d(x, weight, padding=1)
        assert (y - ref).abs().max() < 1e-4 * ref.abs().max()
        with pytest.raises(RuntimeError, match="unavailable"):
            winograd_conv3x3(x, weight, compiled=True)
    finally:
        monkeypatch.delenv("SASAN_WINOGRAD_KERNELS")
        K._reset()


def test_broken_compiler_warns_once_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SASAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")           # a "compiler" that always fails
    K._reset()
    try:
        with caplog.at_level(logging.WARNING, logger="sasan.models.winograd_kernels"):
            assert not K.available()
            assert not K.available()
        assert len([r for r in caplog.records if "not built" in r.message]) == 1
        assert list(tmp_path.iterdir()) == []        # no half-written library left behind
    finally:
        K._reset()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")
def test_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SASAN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    K._reset()
    try:
        assert K.available()
        built = list(tmp_path.glob("winograd_kernels_*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        K._reset()
        assert K.available()                          # loaded again, not rebuilt
        assert [p.stat().st_mtime_ns for p in tmp_path.glob("*.so")] == [stamp]
    finally:
        K._reset()
