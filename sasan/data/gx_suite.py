"""The Great Expectations (1.x) suite that checks the per-volume table of a raw data set.

Each expectation carries in its ``meta``: ``check`` (a short name), ``severity``
(``error`` fails the stage, ``warning`` is reported only), ``blame`` (the table column
holding the file to name) and ``reason`` (a ``str.format`` template over the row).

GX runs in an ephemeral, in-memory context with analytics and progress bars off: nothing
is written to disk and nothing leaves the machine.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sasan.data.config import ValidateConfig

log = logging.getLogger(__name__)

NUMERIC_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                  "float32", "float64", "bool"]


def expectation_specs(cfg: ValidateConfig) -> list[dict[str, Any]]:
    """Plain description of the suite: GX class name, its kwargs, and our meta."""

    def spec(kind: str, check: str, severity: str, blame: str, reason: str, **kwargs: Any) -> dict[str, Any]:
        return {"type": kind, "kwargs": kwargs,
                "meta": {"check": check, "severity": severity, "blame": blame, "reason": reason}}

    specs = [
        spec("ExpectTableRowCountToBeBetween", "at least one case", "error", "", "no cases", min_value=1),
        spec("ExpectColumnValuesToBeNull", "readable 3-D NIfTI", "error", "error_file", "{error}",
             column="error"),
        spec("ExpectColumnValuesToBeInSet", "finite voxels", "error", "image", "{finite_detail}",
             column="finite", value_set=[True]),
        spec("ExpectColumnValuesToBeInSet", "numeric voxel type", "error", "image",
             "unsupported voxel type {dtype}", column="dtype", value_set=NUMERIC_DTYPES),
        spec("ExpectColumnPairValuesAToBeGreaterThanB", "non-constant intensity", "error", "image",
             "constant image (min = max = {min})", column_A="max", column_B="min"),
        spec("ExpectColumnValuesToBeInSet", "label values in dataset.json", "error", "label",
             "unknown label values {unknown_labels} (dataset.json allows {allowed_labels})",
             column="labels_ok", value_set=[True]),
        spec("ExpectColumnValuesToBeInSet", "label shape equals image shape", "error", "label",
             "label shape {label_shape} differs from image shape {shape}", column="shape_match", value_set=[True]),
        spec("ExpectColumnValuesToBeInSet", "label affine equals image affine", "error", "label",
             "label affine differs from the image's by up to {affine_diff_mm:.4g} mm",
             column="affine_match", value_set=[True]),
        spec("ExpectColumnValuesToBeInSet", "file hash matches manifest", "error", "hash_file",
             "sha256 differs from manifest.json (file changed after ingest)", column="sha256_ok", value_set=[True]),
        spec("ExpectCompoundColumnsToBeUnique", "unique case id per domain", "error", "image",
             "case id '{case_id}' appears more than once in domain '{domain}'", column_list=["domain", "case_id"]),
        spec("ExpectColumnValuesToBeInSet", "label has foreground", "warning", "label",
             "label image contains background only", column="label_has_foreground", value_set=[True]),
    ]
    for axis in "xyz":
        specs.append(spec("ExpectColumnValuesToBeBetween", f"spacing {axis} in (0, {cfg.max_spacing_mm}] mm",
                          "error", "image", "voxel spacing {spacing} mm outside (0, %g]" % cfg.max_spacing_mm,
                          column=f"spacing_{axis}", min_value=0.0, max_value=cfg.max_spacing_mm, strict_min=True))
        specs.append(spec("ExpectColumnValuesToBeBetween", f"size {axis} >= {cfg.min_size}", "warning", "image",
                          "image shape {shape} has an axis shorter than %d voxels" % cfg.min_size,
                          column=f"size_{axis}", min_value=cfg.min_size))
    return specs


def run_suite(table: pd.DataFrame, cfg: ValidateConfig) -> list[dict[str, Any]]:
    """Validate ``table`` (one row per case, a unique ``row_id`` column) with GX.

    Returns one dict per expectation: ``check``, ``severity``, ``expectation``, ``column``,
    ``success`` and ``failed_rows`` (row ids), plus ``exception`` if GX could not evaluate it."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=project)
    batch = (context.data_sources.add_pandas("raw_volumes")
             .add_dataframe_asset("volume_table")
             .add_batch_definition_whole_dataframe("all_volumes"))
    suite = context.suites.add(gx.ExpectationSuite(name="raw_volumes"))
    specs = expectation_specs(cfg)
    for s in specs:
        suite.add_expectation(getattr(gxe, s["type"])(**s["kwargs"], meta=s["meta"]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="raw_volumes", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": table},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]},
    )
    order = {s["meta"]["check"]: i for i, s in enumerate(specs)}
    checks = []
    for res in sorted(result.results, key=lambda r: order.get((r.expectation_config.meta or {}).get("check"), 0)):
        conf = res.expectation_config
        meta = dict(conf.meta or {})
        info = res.exception_info or {}
        raised = info.get("raised_exception") if isinstance(info, dict) else False
        rows = sorted({int(r["row_id"]) for r in (res.result or {}).get("unexpected_index_list") or []
                       if isinstance(r, dict) and "row_id" in r})
        checks.append({
            "check": meta.get("check", conf.type),
            "severity": meta.get("severity", "error"),
            "blame": meta.get("blame", ""),
            "reason": meta.get("reason", ""),
            "expectation": conf.type,
            "column": _columns(conf.kwargs),
            "success": bool(res.success),
            "failed_rows": rows,
            "observed": (res.result or {}).get("observed_value"),
            "exception": info.get("exception_message") if raised else None,
        })
    log.debug("great expectations: %d expectations, success=%s", len(checks), result.success)
    return checks


def _columns(kwargs: dict[str, Any]) -> list[str]:
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return list(kwargs.get("column_list") or [])
