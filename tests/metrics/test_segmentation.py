import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_dice
from scipy import ndimage
from scipy.spatial.distance import cdist

from sasan.errors import DataError
from sasan.metrics import aggregate_subjects, assd, dice, is_missing, segmentation_scores


def cube(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def brute_force_assd(pred, gt, spacing):
    """Independent reference: surface = voxels with a face neighbour outside (array border
    counts as outside); all pairwise distances between the two surfaces in mm."""

    def surf(m):
        p = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(m.ndim):
            for shift in (-1, 1):
                inner &= np.roll(p, shift, axis=axis)[tuple(slice(1, -1) for _ in m.shape)]
        return np.argwhere(m & ~inner) * np.asarray(spacing, dtype=float)

    sp, sg = surf(pred), surf(gt)
    d = cdist(sp, sg)
    return (d.min(axis=1).sum() + d.min(axis=0).sum()) / (len(sp) + len(sg))


def test_offset_cubes_dice_by_counting():
    gt = cube((24, 24, 24), (5, 5, 5), 10)
    pred = cube((24, 24, 24), (8, 5, 5), 10)  # shifted by 3 voxels along axis 0
    # overlap 7 x 10 x 10 = 700 voxels, each cube 1000
    assert dice(pred, gt) == pytest.approx(2 * 700 / 2000)


@pytest.mark.parametrize("d", [1, 3])
def test_offset_cubes_assd_against_brute_force_anisotropic(d):
    spacing = (2.0, 0.7, 1.3)
    gt = cube((20, 20, 20), (4, 5, 6), 8)
    pred = cube((20, 20, 20), (4 + d, 5, 6), 8)
    vox, mm = assd(pred, gt, spacing)
    assert vox == pytest.approx(brute_force_assd(pred, gt, (1, 1, 1)), rel=1e-12)
    assert mm == pytest.approx(brute_force_assd(pred, gt, spacing), rel=1e-12)
    assert mm != pytest.approx(vox)  # the spacing really enters


def test_single_voxels_hand_computed():
    gt = np.zeros((5, 5, 5), bool)
    pred = np.zeros((5, 5, 5), bool)
    gt[1, 2, 2] = True
    pred[4, 2, 2] = True  # 3 voxels away along axis 0
    assert assd(pred, gt, (2.5, 1.0, 1.0)) == pytest.approx((3.0, 7.5))
    assert dice(pred, gt) == 0.0


def test_identical_masks():
    m = cube((12, 12, 12), (2, 3, 4), 5)
    assert dice(m, m) == 1.0
    assert assd(m, m, (1.5, 1.0, 3.0)) == (0.0, 0.0)
    assert not is_missing(m, m)


def test_structure_touching_the_border_keeps_its_border_surface():
    gt = np.zeros((6, 6, 6), bool)
    gt[:3] = True  # the face at index 0 lies on the array border
    pred = np.zeros_like(gt)
    pred[:2] = True
    assert assd(pred, gt)[0] == pytest.approx(brute_force_assd(pred, gt, (1, 1, 1)))


def test_missing_structures():
    m = cube((8, 8, 8), (1, 1, 1), 3)
    empty = np.zeros_like(m)
    spacing = (1.0, 2.0, 3.0)
    assert assd(empty, m, spacing) == (50.0, 100.0)
    assert assd(m, empty, spacing, cap_vox=20.0) == (20.0, 40.0)
    assert assd(empty, empty, spacing) == (0.0, 0.0)
    assert dice(empty, m) == 0.0 and dice(empty, empty) == 1.0
    assert is_missing(empty, m) and is_missing(m, empty) and is_missing(empty, empty)


def test_shape_mismatch_is_a_data_error():
    with pytest.raises(DataError):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(DataError):
        assd(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1.0, 1.0))


def random_blob(rng, shape, threshold):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.5)
    return field > threshold * field.std()


def one_hot_channels(m):
    return torch.from_numpy(np.stack([~m, m]))[None].float()  # (1, 2, ...) background first


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (28, 24, 20)
    pred, gt = random_blob(rng, shape, 0.8), random_blob(rng, shape, 0.8)
    spacing = (1.2, 0.8, 2.5)
    ref_dice = compute_dice(one_hot_channels(pred), one_hot_channels(gt), include_background=False).item()
    assert dice(pred, gt) == pytest.approx(ref_dice, rel=1e-6)
    vox, mm = assd(pred, gt, spacing)
    p, g = one_hot_channels(pred), one_hot_channels(gt)
    ref_vox = compute_average_surface_distance(p, g, symmetric=True).item()
    ref_mm = compute_average_surface_distance(p, g, symmetric=True, spacing=spacing).item()
    assert vox == pytest.approx(ref_vox, rel=1e-5)
    assert mm == pytest.approx(ref_mm, rel=1e-5)


def test_segmentation_scores_per_structure_and_mean():
    shape = (16, 16, 16)
    gt = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    gt[cube(shape, (1, 1, 1), 4)] = 1
    pred[cube(shape, (2, 1, 1), 4)] = 1  # 3/4 overlap: Dice 0.75
    gt[cube(shape, (9, 9, 9), 5)] = 4
    pred[cube(shape, (9, 9, 9), 5)] = 4  # perfect
    gt[cube(shape, (1, 10, 1), 3)] = 2  # missed entirely
    labels = {"background": 0, "MYO": 1, "LA": 2, "AA": 4}
    spacing = (1.0, 1.0, 2.0)
    s = segmentation_scores(pred, gt, labels, spacing)
    assert set(s["per_structure"]) == {"MYO", "LA", "AA"}
    myo, la, aa = (s["per_structure"][k] for k in ("MYO", "LA", "AA"))
    assert myo["dice"] == pytest.approx(0.75)
    assert myo["assd_vox"] == pytest.approx(brute_force_assd(pred == 1, gt == 1, (1, 1, 1)), rel=1e-12)
    assert myo["assd_mm"] == pytest.approx(brute_force_assd(pred == 1, gt == 1, spacing), rel=1e-12)
    assert la == pytest.approx({"dice": 0.0, "assd_vox": 50.0, "assd_mm": 50.0 * 4 / 3, "missing": True})
    assert aa == {"dice": 1.0, "assd_vox": 0.0, "assd_mm": 0.0, "missing": False}
    assert s["mean"]["dice"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert s["mean"]["assd_vox"] == pytest.approx((myo["assd_vox"] + 50.0) / 3)
    assert all(type(v) is float for v in s["mean"].values())
    assert type(myo["dice"]) is float and type(myo["missing"]) is bool


def test_aggregate_subjects_hand_computed():
    def subject(d1, d2, a1, a2):
        per = {
            "LV": {"dice": d1, "assd_vox": a1, "assd_mm": 2 * a1, "missing": False},
            "AA": {"dice": d2, "assd_vox": a2, "assd_mm": 2 * a2, "missing": a2 == 50.0},
        }
        mean = {k: (per["LV"][k] + per["AA"][k]) / 2 for k in ("dice", "assd_vox", "assd_mm")}
        return {"per_structure": per, "mean": mean}

    agg = aggregate_subjects([subject(0.8, 0.6, 2.0, 4.0), subject(0.6, 0.0, 4.0, 50.0)])
    assert agg["n_subjects"] == 2
    lv, aa = agg["per_structure"]["LV"], agg["per_structure"]["AA"]
    assert lv["dice"] == pytest.approx(0.7) and lv["dice_std"] == pytest.approx(0.1)
    assert lv["assd_mm"] == pytest.approx(6.0) and lv["assd_mm_std"] == pytest.approx(2.0)
    assert aa["assd_vox"] == pytest.approx(27.0) and aa["assd_vox_std"] == pytest.approx(23.0)
    assert aa["n_missing"] == 1 and lv["n_missing"] == 0
    # subject means: dice 0.7 and 0.3; assd_vox 3 and 27
    assert agg["mean"]["dice"] == pytest.approx(0.5) and agg["mean"]["dice_std"] == pytest.approx(0.2)
    assert agg["mean"]["assd_vox"] == pytest.approx(15.0) and agg["mean"]["assd_vox_std"] == pytest.approx(12.0)
    with pytest.raises(ValueError):
        aggregate_subjects([])


@pytest.mark.parametrize("labels", [{"background": 0}, {}])
def test_segmentation_scores_without_a_foreground_structure_is_refused(labels):
    vol = np.zeros((4, 4, 4), np.int16)
    with pytest.raises(ValueError, match="labels name no foreground structure"):
        segmentation_scores(vol, vol, labels, (1.0, 1.0, 1.0))


def test_aggregate_subjects_refuses_subjects_scoring_different_structures():
    shape = (8, 8, 8)
    gt = np.zeros(shape, np.int16)
    gt[cube(shape, (1, 1, 1), 3)] = 1
    gt[cube(shape, (5, 5, 5), 2)] = 2
    a = segmentation_scores(gt, gt, {"background": 0, "LV": 1, "MYO": 2}, (1.0, 1.0, 1.0))
    b = segmentation_scores(gt, gt, {"background": 0, "LV": 1}, (1.0, 1.0, 1.0))
    c = segmentation_scores(gt, gt, {"background": 0, "MYO": 2, "LV": 1}, (1.0, 1.0, 1.0))
    for other in (b, c):  # a structure fewer; the same structures in another order
        with pytest.raises(ValueError, match="subjects score different structures"):
            aggregate_subjects([a, other])
    assert aggregate_subjects([a, a])["n_subjects"] == 2


def test_present_structures_are_not_clipped_at_the_cap():
    """The cap stands in only for a missing structure: two single voxels 60 voxels apart are 60
    voxels (and 60 x 2 mm) apart, above the default cap of 50."""
    gt = np.zeros((64, 3, 3), bool)
    pred = np.zeros_like(gt)
    gt[1, 1, 1] = True
    pred[61, 1, 1] = True
    spacing = (2.0, 1.0, 1.0)
    assert assd(pred, gt, spacing) == pytest.approx((60.0, 120.0), rel=1e-12)
    assert assd(pred, gt, spacing, cap_vox=10.0) == pytest.approx((60.0, 120.0), rel=1e-12)
    s = segmentation_scores(pred.astype(np.int16), gt.astype(np.int16), {"background": 0, "LV": 1}, spacing)
    assert s["per_structure"]["LV"] == pytest.approx(
        {"dice": 0.0, "assd_vox": 60.0, "assd_mm": 120.0, "missing": False}, rel=1e-12)
    assert s["mean"] == pytest.approx({"dice": 0.0, "assd_vox": 60.0, "assd_mm": 120.0}, rel=1e-12)
