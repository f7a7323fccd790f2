import numpy as np
import pytest
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from scipy import ndimage

from sasan.errors import DataError
from sasan.losses import ssim_map
from sasan.losses.ssim import ssim
from sasan.metrics import body_mask, masked_ssim, otsu_threshold, translation_scores


def pair(seed, shape=(20, 18, 4)):
    rng = np.random.default_rng(seed)
    real = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    fake = real + 0.05 * rng.standard_normal(shape) + 0.01
    return fake, real


def test_scores_against_numpy_formulas_on_a_given_mask():
    fake, real = pair(0)
    mask = np.zeros(real.shape, bool)
    mask[3:15, 2:16, :] = True
    s = translation_scores(fake, real, mask=mask, data_range=2.0)
    f, r = fake[mask], real[mask]
    e = f - r
    assert s["mae"] == pytest.approx(np.abs(e).sum() / mask.sum(), rel=1e-12)
    assert s["rmse"] == pytest.approx(np.sqrt((e**2).sum() / mask.sum()), rel=1e-12)
    assert s["psnr"] == pytest.approx(10 * np.log10(4.0 / (e**2).mean()), rel=1e-12)
    fc, rc = f - f.mean(), r - r.mean()
    assert s["pearson"] == pytest.approx((fc * rc).sum() / np.sqrt((fc**2).sum() * (rc**2).sum()), rel=1e-12)
    # SSIM: per slice, the map averaged over window centres inside the mask (rows 3..14 and
    # columns 3..15 once the 3-pixel border of the valid map is removed)
    per_slice = []
    for k in range(real.shape[-1]):
        m = ssim_map(
            torch.from_numpy(fake[None, None, ..., k]), torch.from_numpy(real[None, None, ..., k]), data_range=2.0
        )[0, 0].numpy()
        per_slice.append(m[0:12, 0:13].mean())  # valid-map index i <-> image row i + 3
    assert s["ssim"] == pytest.approx(np.mean(per_slice), rel=1e-12)
    assert all(type(v) is float for v in s.values())


def test_default_data_range_is_the_masked_real_range():
    fake, real = pair(1)
    mask = np.ones(real.shape, bool)
    r = real.max() - real.min()
    explicit = translation_scores(fake, real, mask, data_range=r)
    assert translation_scores(fake, real, mask)["psnr"] == pytest.approx(explicit["psnr"])


def test_psnr_and_ssim_agree_with_monai_on_full_mask():
    fake, real = pair(2, shape=(24, 22, 3))
    mask = np.ones(real.shape, bool)
    s = translation_scores(fake, real, mask=mask, data_range=3.0)
    psnr = PSNRMetric(max_val=3.0)(torch.from_numpy(fake)[None, None], torch.from_numpy(real)[None, None])
    assert s["psnr"] == pytest.approx(psnr.item(), rel=1e-6)
    ref = SSIMMetric(spatial_dims=2, data_range=3.0, win_size=7, kernel_sigma=1.5)(slices(fake), slices(real))
    assert s["ssim"] == pytest.approx(ref.mean().item(), abs=1e-6)


def slices(volume):
    """(H, W, D) -> (D, 1, H, W) tensor: the slices along the last axis as a batch."""
    return torch.from_numpy(np.moveaxis(volume, -1, 0).copy())[:, None]


def test_identical_images():
    _, real = pair(3)
    s = translation_scores(real, real, mask=np.ones(real.shape, bool))
    assert s["mae"] == 0.0 and s["rmse"] == 0.0 and s["psnr"] == float("inf")
    assert s["ssim"] == pytest.approx(1.0, abs=1e-12) and s["pearson"] == pytest.approx(1.0)


def test_2d_images_and_errors():
    fake, real = pair(4, shape=(16, 16))
    s = translation_scores(fake, real, mask=np.ones(real.shape, bool), data_range=1.0)
    assert 0 < s["ssim"] < 1
    # a full mask: every window centre counts, so the score is the plain SSIM of the two images
    ref = ssim(torch.from_numpy(fake)[None, None], torch.from_numpy(real)[None, None], data_range=1.0)
    assert s["ssim"] == pytest.approx(ref.item(), rel=1e-12)
    assert masked_ssim(fake, real, np.ones(real.shape, bool), 1.0) == pytest.approx(ref.item(), rel=1e-12)
    # the other scores on the 2-D arrays by their formulas
    e = fake - real
    assert s["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-12)
    assert s["psnr"] == pytest.approx(10 * np.log10(1.0 / (e**2).mean()), rel=1e-12)
    with pytest.raises(DataError):
        translation_scores(fake, real[:, :15])
    with pytest.raises(DataError):
        translation_scores(fake, real, mask=np.zeros(real.shape, bool))


def test_masked_ssim_skips_slices_without_masked_centres():
    fake, real = pair(5)
    mask = np.zeros(real.shape, bool)
    mask[..., 1] = True  # only slice 1 counts
    only_one = masked_ssim(fake[..., 1:2], real[..., 1:2], np.ones((20, 18, 1), bool), 1.0)
    assert masked_ssim(fake, real, mask, 1.0) == pytest.approx(only_one, rel=1e-12)


def test_otsu_matches_brute_force_between_class_variance():
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.normal(0.0, 1.0, 3000), rng.normal(6.0, 1.5, 1000)])
    thr = otsu_threshold(values)
    candidates = np.linspace(values.min(), values.max(), 257)[1:-1]  # the histogram bin edges

    def between(t):
        lo, hi = values[values <= t], values[values > t]
        return lo.size * hi.size * (lo.mean() - hi.mean()) ** 2

    best = candidates[np.argmax([between(t) for t in candidates])]
    # bin-centre means vs exact means may move the optimum by at most one bin
    assert abs(thr - best) <= 1.01 * (values.max() - values.min()) / 256
    assert 1.5 < thr < 4.5
    assert otsu_threshold(np.full(5, 2.0)) == 2.0


def test_body_mask_keeps_largest_component_and_fills_holes():
    img = np.zeros((30, 30, 12))
    zz, yy, xx = np.mgrid[:30, :30, :12]
    body = ((zz - 15) / 10.0) ** 2 + ((yy - 15) / 10.0) ** 2 + ((xx - 6) / 5.0) ** 2 <= 1
    cavity = ((zz - 15) / 3.0) ** 2 + ((yy - 15) / 3.0) ** 2 + ((xx - 6) / 2.0) ** 2 <= 1
    img[body] = 1.0
    img[cavity] = 0.0  # an enclosed dark cavity (e.g. lungs) must be part of the body
    img[1:3, 1:3, 1:3] = 1.0  # a separate bright speck (e.g. a marker) must not
    img += 0.05 * np.random.default_rng(7).standard_normal(img.shape)
    mask = body_mask(img)
    assert np.array_equal(mask, body)
    assert np.array_equal(body_mask(img, threshold=0.5), body)
    assert not body_mask(img, threshold=10.0).any()


def test_ssim_slices_along_the_axis_asked_for():
    """``axis``: SSIM slice by slice along that axis (the model's slicing axis), as if it were
    stored last; the other scores do not depend on it; the default stays the last axis."""
    fake, real = pair(7, shape=(20, 9, 18))
    mask = np.zeros(real.shape, bool)
    mask[2:18, :, 3:15] = True
    last = translation_scores(*(np.moveaxis(a, 1, -1) for a in (fake, real)), np.moveaxis(mask, 1, -1), 2.0)
    assert translation_scores(fake, real, mask, 2.0, axis=1) == pytest.approx(last, rel=1e-12)
    default = translation_scores(fake, real, mask, 2.0)
    assert default == translation_scores(fake, real, mask, 2.0, axis=-1)
    assert default["ssim"] != pytest.approx(last["ssim"], rel=1e-3)
    assert {k: v for k, v in default.items() if k != "ssim"} == pytest.approx(
        {k: v for k, v in last.items() if k != "ssim"}, rel=1e-12)
    assert masked_ssim(fake, real, mask, 2.0, axis=1) == pytest.approx(last["ssim"], rel=1e-12)


def test_masked_ssim_chunks_do_not_change_the_score():
    """More slices than one chunk (16), some without a masked window centre (skipped): every
    chunk size gives the mean over the kept slices of each slice's masked SSIM."""
    fake, real = pair(8, shape=(14, 13, 19))
    mask = np.zeros(real.shape, bool)
    mask[4:11, 3:10, :] = True
    mask[..., [2, 15, 16]] = False  # no centres: skipped, in the first chunk, at its end and in the second
    mask[:2, :, 17] = True  # border rows only: no window centre there either
    mask[4:11, 3:10, 17] = False
    kept = [k for k in range(19) if k not in (2, 15, 16, 17)]
    per_slice = []
    for k in kept:
        m = ssim_map(
            torch.from_numpy(fake[None, None, ..., k]), torch.from_numpy(real[None, None, ..., k]), data_range=2.0
        )[0, 0].numpy()
        per_slice.append(m[1:8, 0:7].mean())  # valid-map index i <-> image row (column) i + 3
    expected = float(np.mean(per_slice))
    assert masked_ssim(fake, real, mask, 2.0) == pytest.approx(expected, rel=1e-12)  # chunk 16: 16 + 3 slices
    for chunk in (1, 5, 16, 19, 64):
        assert masked_ssim(fake, real, mask, 2.0, chunk=chunk) == pytest.approx(expected, rel=1e-12), chunk


def test_masked_ssim_is_nan_without_a_window_centre_in_the_mask():
    """A mask that holds no window centre (only the 3-pixel border of each slice): nothing to
    average, nan; translation_scores keeps the other scores."""
    fake, real = pair(9, shape=(16, 16, 3))
    mask = np.zeros(real.shape, bool)
    mask[:3] = True
    mask[:, -3:] = True
    assert np.isnan(masked_ssim(fake, real, mask, 2.0))
    assert np.isnan(masked_ssim(fake[..., 0], real[..., 0], mask[..., 0], 2.0))  # 2-D too
    s = translation_scores(fake, real, mask, data_range=2.0)
    assert np.isnan(s["ssim"]) and np.isfinite(s["mae"]) and np.isfinite(s["psnr"])
    assert s["mae"] == pytest.approx(np.abs(fake - real)[mask].mean(), rel=1e-12)


@pytest.mark.parametrize("data_range", [0.0, -1.0])
def test_a_non_positive_data_range_is_refused(data_range):
    fake, real = pair(10)
    with pytest.raises(DataError, match=f"data range must be positive, got {data_range}"):
        translation_scores(fake, real, np.ones(real.shape, bool), data_range=data_range)


def test_constant_real_image():
    """Pearson is nan (no variance to correlate with); the default data range (max - min of the
    real image over the mask) is then 0, which is refused: a constant image needs an explicit one."""
    fake, _ = pair(11)
    real = np.full(fake.shape, 0.25)
    mask = np.ones(real.shape, bool)
    s = translation_scores(fake, real, mask, data_range=2.0)
    assert np.isnan(s["pearson"])
    assert s["mae"] == pytest.approx(np.abs(fake - 0.25).mean(), rel=1e-12) and np.isfinite(s["ssim"])
    with pytest.raises(DataError, match="data range must be positive, got 0.0"):
        translation_scores(fake, real, mask)
