"""Typed configuration of the data stages (phantom, ingest, validate, preprocess).

Composed into :class:`sasan.config.Config`; every class rejects unknown keys.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator

from sasan.configbase import StrictModel


class PhantomConfig(StrictModel):
    """Synthetic cardiac phantom used as the embedded default data set."""

    cases: int = Field(10, ge=2, description="volumes per domain")
    seed: int = 0
    domains: tuple[str, ...] = Field(("mr", "ct"), min_length=1, max_length=2,
                                     description="which domains to draw (mr, ct or both)")
    mr_contrast: Literal["bssfp", "black_blood"] = Field(
        "bssfp", description="MR appearance: bright-blood bSSFP (as MM-WHS) or black-blood turbo spin echo")


class IngestConfig(StrictModel):
    """Where the data comes from and how subjects are split (once, seeded)."""

    source: str = Field("data/phantom", description="local folder, s3://bucket/prefix or dvc://REPO@REV/path")
    layout: Literal["nnunet", "mmwhs", "brats", "paired"] = "nnunet"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


class ValidateConfig(StrictModel):
    """Error/warning thresholds of the validate stage (see sasan/data/gx_suite.py)."""

    min_cases_train: int = Field(2, ge=1, description="error if a domain has fewer training cases")
    min_cases_test: int = Field(1, ge=0, description="error if a domain has fewer test cases")
    max_spacing_mm: float = Field(20.0, gt=0.0, description="error above this voxel size")
    min_size: int = Field(8, ge=1, description="warning if an image axis is shorter (voxels)")
    affine_atol_mm: float = Field(1e-3, gt=0.0, description="image/label affine tolerance")
    check_hashes: bool = Field(True, description="compare file sha256 with manifest.json")


# a voxel size in mm (resampling divides by it) and a percentile
PositiveMm = Annotated[float, Field(gt=0.0)]
Percentile = Annotated[float, Field(ge=0.0, le=100.0)]


class PreprocessConfig(StrictModel):
    """Volume -> slice-stack shards (METHOD.md section 5)."""

    axis: Literal[0, 1, 2] = Field(1, description="slicing axis after reorientation to RAS (1 = coronal)")
    image_size: int = Field(256, ge=16, multiple_of=16)
    slices: Literal[1, 3] = 3
    target_spacing: Optional[tuple[PositiveMm, PositiveMm, PositiveMm]] = Field(
        None, description="resample to this voxel size (mm, each > 0); null = keep each volume's")
    crop: Literal["body", "none"] = "body"
    field_of_view_mm: Optional[float] = Field(
        None, gt=0,
        description="in-plane size (mm) of the image_size canvas: every volume keeps its physical scale "
                    "(crop centred on the box if larger, padding if smaller); null = fit each plane")
    clip_percentiles: tuple[Percentile, Percentile] = Field((2.0, 98.0), description="low < high, in [0, 100]")
    # fixed z-score -> [-1, 1] bounds per modality (METHOD.md: MRI [-1.8, 4.4], CT [-2.8, 3.2])
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"mr": (-1.8, 4.4), "ct": (-2.8, 3.2), "t1": (-1.8, 4.4), "t2": (-1.8, 4.4)}
    )
    skip_empty_slices: bool = Field(True, description="drop slices with no body (by intensity, never by label)")
    body_fraction: float = Field(0.01, ge=0.0, lt=1.0,
                                 description="a slice/plane is body if this fraction of it is above the body threshold")
    crop_margin: int = Field(4, ge=0, description="voxels kept around the body box")
    dtype: Literal["float16", "float32"] = Field("float16", description="image shard dtype")

    @field_validator("clip_percentiles")
    @classmethod
    def _low_below_high(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"low must be below high, got {list(value)}")
        return value
