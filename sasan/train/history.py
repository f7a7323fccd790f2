"""Per-phase training curves: kept as a TSV (for ``dvc plots``) and drawn as a PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sasan.atomic import write_text
from sasan.figures import pyplot, save_png


SPARSE = 50        # a curve of this many points or fewer is drawn with a marker on each


class History:
    """Rows keyed by step, so a resumed phase overwrites the steps it redoes."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[int, dict[str, float]] = {}
        if path.is_file():
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    self.rows[int(row["step"])] = {k: float(v) for k, v in row.items() if k != "step" and v != ""}

    def add(self, step: int, values: dict[str, float]) -> None:
        self.rows[step] = dict(values)
        self.write()

    def write(self) -> None:
        keys = sorted({k for r in self.rows.values() for k in r})
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["step", *keys])
        for step in sorted(self.rows):
            w.writerow([step, *(f"{self.rows[step][k]:.6g}" if k in self.rows[step] else "" for k in keys)])
        write_text(self.path, buf.getvalue())

    def plot(self, png: Path, title: str) -> None:
        if not self.rows:
            return
        plt = pyplot()

        steps = sorted(self.rows)
        keys = [k for k in sorted({k for r in self.rows.values() for k in r}) if k != "s_per_it"]
        cols = 3
        rows = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            xs = [s for s in steps if key in self.rows[s]]
            # markers where points are few: a line through one point draws nothing
            ax.plot(xs, [self.rows[s][key] for s in xs], lw=1.2, marker="o" if len(xs) <= SPARSE else None, ms=3)
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(title)
        fig.tight_layout()
        save_png(fig, png, dpi=90)
