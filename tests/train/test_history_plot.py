"""A training curve with one logged point (a phase of a few steps) is drawn visibly."""

import numpy as np

from sasan.train.history import History


def _curve_pixels(png) -> int:
    """Pixels of matplotlib's first line colour (C0, #1f77b4)."""
    import matplotlib.image

    rgb = matplotlib.image.imread(png)[..., :3]
    return int((np.abs(rgb - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.08).sum())


def test_a_one_point_curve_is_visible(tmp_path):
    history = History(tmp_path / "p.tsv")
    history.add(2, {"loss": 0.5, "s_per_it": 1.0})
    history.plot(tmp_path / "p.png", "v: p")
    assert _curve_pixels(tmp_path / "p.png") > 10


def test_a_long_curve_is_a_plain_line(tmp_path):
    history = History(tmp_path / "p.tsv")
    for step in range(1, 201):
        history.rows[step] = {"loss": 1.0 / step}
    history.plot(tmp_path / "p.png", "v: p")
    assert _curve_pixels(tmp_path / "p.png") > 10
