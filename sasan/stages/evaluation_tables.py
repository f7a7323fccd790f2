"""Plain-text tables of an evaluation (the segmentation and the paired results tables)."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list[str]], gap: int = 2) -> list[str]:
    """Lines of a plain-text table: the header, a rule, the rows; the first column left-,
    the others right-aligned, each as wide as its widest entry, ``gap`` spaces between."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return (" " * gap).join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    head = line(header)
    return [head, "-" * len(head), *(line(row) for row in rows)]
