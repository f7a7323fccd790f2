"""Safe NIfTI loading: every way a file can be bad becomes one :class:`DataError` naming it.

A volume is read in one go (whole-file gzip decompression is the fastest path through
zlib, and lets us tell a corrupt stream from a truncated one), its header is checked before
the voxel data is touched, and the voxels are read in their stored dtype (no float64).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from sasan.errors import DataError

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00",)
_NIFTI2_MAGICS = (b"n+2\x00",)


@dataclass(frozen=True)
class Volume:
    """A 3-D volume with its geometry. ``array`` is (X, Y, Z) in the file's voxel order."""

    array: np.ndarray
    affine: np.ndarray  # (4, 4) voxel -> world (mm), from the qform/sform nibabel prefers
    header: nib.Nifti1Header | nib.Nifti2Header
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes, from the same transform as ``affine``
        (see :func:`voxel_spacing`)."""
        return voxel_spacing(self.header, self.affine)

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes, e.g. ``"RAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))


SPACING_ATOL_MM = 1e-4  # pixdim and the affine's column norms agree within this


def voxel_spacing(header: nib.Nifti1Header | nib.Nifti2Header, affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm: the header's pixdim where it agrees with the affine's column norms
    (within ``SPACING_ATOL_MM``), else the column norms. The geometry comes from the sform
    when there is one, and converters often leave a stale pixdim next to it (an sform-only
    file with 2 x 2 x 3 mm columns and pixdim 1 x 1 x 1): the spacing must describe the
    same grid as the affine."""
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    norms = tuple(float(n) for n in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))
    if all(abs(z - n) <= SPACING_ATOL_MM for z, n in zip(zooms, norms)):
        return zooms  # type: ignore[return-value]
    return norms  # type: ignore[return-value]


def _check_spacing(volume: "Volume") -> None:
    zooms = tuple(float(z) for z in volume.header.get_zooms()[:3])
    spacing = volume.spacing
    if spacing != zooms:
        log.warning("%s: header pixdim %s mm disagrees with the affine's voxel size %s mm; using the affine's",
                    volume.path, tuple(round(z, 6) for z in zooms), tuple(round(n, 6) for n in spacing))


def read_bytes(path: Path) -> bytes:
    """The file's uncompressed bytes; gzip problems become specific DataErrors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a NIfTI file", path) from None
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path) from None
    if not data:
        raise DataError("empty file (0 bytes)", path)
    if data[:2] != _GZIP_MAGIC:
        if path.name.endswith(".gz"):
            raise DataError("not a gzip-compressed file although named .gz (not a .nii.gz NIfTI)", path)
        return data
    decompress, codec_errors = gzip_codec()
    try:
        return decompress(data)
    except EOFError:
        raise DataError("truncated gzip stream (file ends before the end-of-stream marker)", path) from None
    except (gzip.BadGzipFile, zlib.error, *codec_errors) as err:
        raise DataError(f"corrupt gzip data ({err})", path) from None


def gzip_codec() -> tuple[Callable[[bytes], bytes], tuple[type[Exception], ...]]:
    """Whole-buffer gzip decompression: python-isal's (about 3x faster inflate) when it is
    installed, else the standard library's; plus the codec's own error types."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        return gzip.decompress, ()
    return igzip.decompress, (isal_zlib.error,)


def parse_image(raw: bytes, path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI-1/2 single-file image from uncompressed bytes, header and size checked."""
    if len(raw) >= 348 and raw[344:348] in _NIFTI1_MAGICS:
        klass = nib.Nifti1Image
    elif len(raw) >= 540 and raw[4:8] in _NIFTI2_MAGICS:
        klass = nib.Nifti2Image
    elif len(raw) < 348:
        raise DataError(f"not a NIfTI file (only {len(raw)} bytes, a NIfTI header has 348)", path)
    else:
        raise DataError("not a NIfTI-1/NIfTI-2 single file (header magic 'n+1'/'n+2' missing)", path)
    try:
        img = klass.from_bytes(raw)
    except Exception as err:  # nibabel raises several unrelated types for bad headers
        raise DataError(f"unreadable NIfTI header ({type(err).__name__}: {err})", path) from None
    header = img.header
    shape = header.get_data_shape()
    needed = int(img.dataobj.offset) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    if len(raw) < needed:
        raise DataError(f"truncated file: header promises {needed} bytes of header+voxels, file has {len(raw)}", path)
    return img


def _check_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:  # (X, Y, Z, 1) is a 3-D volume stored as 4-D
        dims.pop()
    if len(dims) < 3:
        raise DataError(f"{len(dims)}-D image of shape {tuple(shape)}, expected a 3-D volume", path)
    if len(dims) > 3:
        raise DataError(f"{len(dims)}-D image of shape {tuple(shape)}, expected a 3-D volume "
                        "(one channel per file)", path)
    if min(dims) < 1:
        raise DataError(f"empty image of shape {tuple(shape)}", path)
    return dims[0], dims[1], dims[2]


def _voxels(img: nib.Nifti1Image | nib.Nifti2Image, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """Voxels in the stored dtype; float32 only when the header asks for intensity scaling."""
    proxy = img.dataobj
    try:
        data = np.asarray(proxy.get_unscaled()).reshape(shape, order="A")
    except Exception as err:
        raise DataError(f"cannot read voxel data ({type(err).__name__}: {err})", path) from None
    slope, inter = proxy.slope, proxy.inter
    if (slope, inter) != (1.0, 0.0) and np.isfinite(slope) and slope != 0:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return data


def load_volume(path: str | Path, *, kind: str = "image", check_finite: bool = True) -> Volume:
    """Load a 3-D NIfTI volume, checked: gzip, header, size, dimensionality, finiteness.

    ``kind="label"`` additionally requires integer values >= 0 and returns an integer
    array (int16/uint8/... as stored, or int32 for integral floats). ``check_finite=False``
    lets a validator count NaN/Inf itself (see :func:`nonfinite_reason`)."""
    path = Path(path)
    img = parse_image(read_bytes(path), path)
    shape = _check_shape(img.header.get_data_shape(), path)
    data = _voxels(img, shape, path)
    if data.dtype.kind not in "biuf":
        raise DataError(f"unsupported voxel type {data.dtype} (complex or RGB)", path)
    if check_finite or kind == "label":
        reason = nonfinite_reason(data)
        if reason:
            raise DataError(reason, path)
    if kind == "label":
        data = _as_label(data, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("degenerate affine (singular or non-finite voxel-to-world matrix)", path)
    volume = Volume(array=data, affine=affine, header=img.header, path=path)
    _check_spacing(volume)
    return volume


def nonfinite_reason(data: np.ndarray) -> str | None:
    """``None`` if every voxel is finite, else a one-line count of NaN and Inf voxels."""
    if data.dtype.kind != "f" or np.isfinite(data).all():
        return None
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    return f"non-finite voxels: {n_nan} NaN and {n_inf} Inf"


def _as_label(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise DataError("label image has non-integer values", path)
        data = rounded.astype(np.int32)
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.size and int(data.min()) < 0:
        raise DataError(f"label image has negative values (min {int(data.min())})", path)
    return data


def check_pair(image: Volume, label: Volume, atol_mm: float = 1e-3) -> None:
    """A label must share the image's voxel grid: same shape and (within ``atol_mm``) affine."""
    if image.array.shape != label.array.shape:
        raise DataError(f"label shape {label.array.shape} differs from image shape {image.array.shape} "
                        f"({image.path.name})", label.path)
    if not affines_match(image.affine, label.affine, atol_mm):
        diff = float(np.abs(image.affine - label.affine).max())
        raise DataError(f"label affine differs from the image's ({image.path.name}) by up to {diff:.4g} mm",
                        label.path)


def label_on_image_grid(image: Volume, label: Volume, atol_mm: float = 1e-3) -> Volume:
    """The label on its image's voxel grid (:func:`check_pair`): itself when stored on it, or,
    when it is stored in another orientation (axes permuted or flipped, e.g. LPS against an
    RAS image: the same voxels in world space), its voxels reordered into the image's axes
    with the image's geometry header. Any other difference raises check_pair's
    :class:`DataError`, measured in the image's orientation."""
    try:
        check_pair(image, label, atol_mm)
        return label
    except DataError:
        transform = nib.orientations.ornt_transform(nib.io_orientation(label.affine),
                                                    nib.io_orientation(image.affine))
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):  # same orientation: a real mismatch
            raise
    array = np.ascontiguousarray(nib.orientations.apply_orientation(label.array, transform))
    affine = label.affine @ nib.orientations.inv_ornt_aff(transform, label.array.shape)
    header = image.header.copy()  # the image's qform, sform, pixdim and units: the same grid
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0
    moved = Volume(array=array, affine=affine, header=header, path=label.path)
    try:
        check_pair(image, moved, atol_mm)
    except DataError as err:
        raise DataError(f"{err.reason}, compared in the image's orientation {image.orientation} "
                        f"(the label is stored {label.orientation})", label.path) from None
    return Volume(array=array, affine=image.affine, header=header, path=label.path)


def affines_match(a: np.ndarray, b: np.ndarray, atol_mm: float = 1e-3) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=atol_mm))


def label_values(label: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer label array (bincount: fast for small labels)."""
    if label.size == 0:
        return []
    flat = label.ravel()
    if flat.dtype.itemsize <= 2 and int(flat.max()) < 65536:
        counts = np.bincount(flat.astype(np.intp, copy=False))
        return [int(v) for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(flat)]
