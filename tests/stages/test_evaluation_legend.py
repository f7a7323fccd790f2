"""segmentations.png carries a legend: each structure's name (the data set's labels, as the
metrics name them) in the colour its label is drawn with."""

import numpy as np
import pytest

from sasan.stages import evaluation_pictures
from sasan.stages.evaluation_pictures import segmentation_montage
from tests.stages.test_evaluate import LABELS, _bundle, _run, make_raw

CARDIAC = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}
BRAIN = {"background": 0, "csf": 1, "gm": 2, "wm": 3}


@pytest.fixture
def drawn(monkeypatch):
    """The figures save_png is given: (legend entries (name, RGBA), overlay colour of each value)."""
    figures = []
    real = evaluation_pictures.save_png

    def record(fig, png, dpi=90):
        legends = [(t.get_text(), tuple(h.get_facecolor())) for lg in fig.legends
                   for t, h in zip(lg.get_texts(), lg.legend_handles)]
        overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name != "gray"]
        figures.append((legends, overlays))
        real(fig, png, dpi)
    monkeypatch.setattr(evaluation_pictures, "save_png", record)
    return figures


def _volumes(labels):
    values = [v for v in labels.values() if v]
    gt = np.zeros((12, 10, 8), np.int64)
    for i, v in enumerate(values):
        gt[1 + 2 * i: 3 + 2 * i, 2:8, 2:6] = v
    return np.random.default_rng(0).normal(size=gt.shape).astype(np.float32), gt


@pytest.mark.parametrize("labels", [CARDIAC, BRAIN], ids=["cardiac", "brain"])
def test_the_legend_names_each_structure_in_its_colour(tmp_path, drawn, labels):
    image, gt = _volumes(labels)
    png = tmp_path / "segmentations.png"
    segmentation_montage(image, gt, {"sasan": gt, "cyclegan": np.zeros_like(gt)}, png, "case 1", labels)
    assert png.stat().st_size > 0
    (legend, overlays), = drawn
    assert [name for name, _ in legend] == [n for n, v in labels.items() if v]      # no background
    for (name, colour) in legend:
        value = labels[name]
        for im in overlays:      # the colour a voxel of this value is drawn with, in every panel
            assert np.allclose(im.cmap(im.norm(value))[:3], colour[:3]), name
    assert len({c[:3] for _, c in legend}) == len(legend)                           # distinct


def test_without_names_the_legend_gives_the_values(tmp_path, drawn):
    image, gt = _volumes(CARDIAC)
    segmentation_montage(image, gt, {"sasan": gt}, tmp_path / "s.png", "case 1")
    assert [name for name, _ in drawn[0][0]] == ["label 1", "label 2", "label 3", "label 4"]


def test_evaluate_draws_the_legend_with_the_data_sets_structure_names(tmp_path, drawn):
    raw = make_raw(tmp_path / "raw")
    _run(raw, {"sasan": _bundle(tmp_path / "m" / "sasan" / "model.pt")}, tmp_path / "out")
    (legend, _), = [d for d in drawn if d[0]]          # dice_bars has no figure legend
    assert [name for name, _ in legend] == [n for n, v in LABELS.items() if v]
