"""Matplotlib without a screen, and PNGs written atomically: the one place figures are made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sasan.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported lazily: nothing at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, png: str | Path, dpi: int = 90) -> None:
    """Save ``fig`` to ``png`` atomically and close it."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
