"""`sasan summary`'s table: methods and structures in the order asked for."""

import pytest

from sasan.metrics import gap_closed
from sasan.stages.evaluate import summary_table


def _result(dice: float) -> dict:
    cell = {"dice": dice, "assd_vox": 2.0, "assd_mm": 3.0}
    return {"per_structure": {"AA": cell, "MYO": cell}, "mean": cell}


def test_summary_table_orders_methods_and_structures():
    results = {"sasan": _result(0.5), "no_adaptation": _result(0.0)}
    table = summary_table(results, ["no_adaptation", "sasan", "absent"], structures=["MYO", "LV", "AA"])
    lines = table.splitlines()
    assert lines[0].split() == ["method", "MYO", "AA", "mean"]      # unknown LV skipped
    assert [line.split()[0] for line in lines[2:4]] == ["no_adaptation", "sasan"]
    assert lines[3].split()[1:] == ["0.500/2.0", "0.500/2.0", "0.500/2.0"]
    assert summary_table(results).splitlines()[0].split() == ["method", "AA", "MYO", "mean"]  # as stored


def test_gap_closed_against_hand_computed_values():
    results = {"no_adaptation": _result(0.1), "sasan": _result(0.6), "cyclegan": _result(0.2),
               "upper_bound": _result(0.85)}
    results["upper_bound"]["n_subjects"] = 2
    gaps = gap_closed({m: r["mean"]["dice"] for m, r in results.items()})
    assert gaps == {"sasan": pytest.approx(0.5 / 0.75), "cyclegan": pytest.approx(0.1 / 0.75)}
    last = summary_table(results, ["no_adaptation", "cyclegan", "sasan", "upper_bound"]).splitlines()[-1]
    assert last == ("gap closed (no adaptation -> upper bound, mean Dice): cyclegan 13%, sasan 67%; "
                    "one run on 2 test subject(s)")


def test_no_gap_line_without_both_reference_rows_or_a_gap():
    assert gap_closed({"sasan": 0.5, "no_adaptation": 0.0}) == {}
    assert gap_closed({"no_adaptation": 0.5, "sasan": 0.4, "upper_bound": 0.5}) == {}
    assert "gap closed" not in summary_table({"no_adaptation": _result(0.5), "sasan": _result(0.4),
                                              "upper_bound": _result(0.5)})
    assert "gap closed" not in summary_table({"sasan": _result(0.5), "no_adaptation": _result(0.0)})
