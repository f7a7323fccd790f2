"""`sasan summary`'s table: methods and structures in the order asked for."""

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
