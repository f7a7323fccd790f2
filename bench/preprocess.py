"""Preprocessing speed on a realistic CT volume, and training-loader throughput.

A 512 x 512 x 200 int16 CT-like volume (.nii.gz, HU-like values with noise, so it
compresses like real CT) is generated into a temporary folder. Timed, median of repeats:

  (a) baseline: nibabel ``as_closest_canonical`` + ``get_fdata`` (float64), percentile
      clip, z-score, per-slice pad-to-square + ``scipy.ndimage.zoom`` to 256 x 256, stack;
  (b) ours: :func:`sasan.data.preprocess.prepare_volume` (native-dtype read in one zlib
      pass, float32, one vectorised torch resize of all slices, subsampled percentiles),
      without and with body cropping;
  (c) the floor: ``gzip.decompress`` of the file (no parsing, no arithmetic).

Then SliceDataset with augmentation over a float16 shard, batches drawn as training draws them
(StreamSampler + collate), batch 2, against what one joint
training step consumes (batch 2 per domain = 4 slices). Single-threaded torch, as numpy is.
Writes bench/results/preprocess.json.

    python bench/preprocess.py [--repeats 3] [--depth 200]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

HERE = Path(__file__).resolve().parent
SIZE = 256


def make_ct(path: Path, depth: int, seed: int = 0) -> Path:
    """A CT-like int16 volume: air, an elliptic body, lungs, a spine, HU noise; 0.7 x 0.7 x 1.25 mm."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.6) ** 2 < 1
    lungs = (((np.abs(xx) - 0.4) / 0.28) ** 2 + (yy / 0.4) ** 2) < 1
    spine = (xx ** 2 + (yy - 0.45) ** 2) < 0.01
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs & body] = -820
    plane[spine] = 700
    volume = np.empty((512, 512, depth), np.int16)
    for z in range(depth):
        shrink = 1.0 - 0.3 * abs(z / depth - 0.5)
        noise = rng.normal(0, 18, size=(512, 512)).astype(np.int16)
        volume[:, :, z] = np.where(body if shrink > 0.9 else ((xx / (0.85 * shrink)) ** 2
                                   + (yy / (0.6 * shrink)) ** 2 < 1), plane, -1000) + noise
    affine = np.diag([-0.7, -0.7, 1.25, 1.0])  # LPS-stored, like DICOM-derived CT
    img = nib.Nifti1Image(volume, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def baseline(path: Path, axis: int = 1) -> np.ndarray:
    """The straightforward way: float64 everywhere, one scipy zoom per slice. Each plane keeps
    its physical aspect (square pixels in mm, as ours: 0.7 x 1.25 mm voxels are not squashed),
    its longer side filling SIZE, centred on a -1 canvas."""
    img = nib.as_closest_canonical(nib.load(path))
    data, spacing = img.get_fdata(), img.header.get_zooms()[:3]
    lo, hi = np.percentile(data, [2, 98])
    data = np.clip(data, lo, hi)
    data = (data - data.mean()) / data.std()
    data = np.clip(2 * (data + 2.8) / 6.0 - 1, -1, 1)
    first, last = (a for a in range(3) if a != axis)
    rows_mm, cols_mm = spacing[last], spacing[first]   # each plane is transposed: rows = the later axis
    finest = min(rows_mm, cols_mm)
    out = []
    for j in range(data.shape[axis]):
        # basic indexing (np.take would copy the volume per slice); rows S -> I, columns R, as ours
        s = data[(slice(None),) * axis + (j,)].T[::-1]
        lens = (s.shape[0] * rows_mm / finest, s.shape[1] * cols_mm / finest)
        h, w = (max(1, int(round(n * SIZE / max(lens)))) for n in lens)
        square = np.full((SIZE, SIZE), -1.0)
        top, left = (SIZE - h) // 2, (SIZE - w) // 2
        square[top:top + h, left:left + w] = ndimage.zoom(s, (h / s.shape[0], w / s.shape[1]), order=1)
        out.append(square)
    return np.stack(out)


def ours(path: Path, crop: str) -> np.ndarray:
    from sasan.data.config import PreprocessConfig
    from sasan.data.preprocess import prepare_volume

    return prepare_volume(path, PreprocessConfig(image_size=SIZE, crop=crop), "CT").slices


def gzip_floor(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def loader_throughput(tmp: Path, n: int = 256, batches: int = 100) -> float:
    """Slices/s of SliceDataset + training's batch drawing (StreamSampler + collate, batch 2,
    augmentation on) over a float16 shard."""
    from sasan.atomic import write_json
    from sasan.config import AugmentConfig
    from sasan.data.dataset import SliceDataset
    from sasan.train.sampling import StreamSampler, collate

    shard = tmp / "shard"
    shard.mkdir()
    rng = np.random.default_rng(0)
    np.save(shard / "images.npy", rng.uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float16))
    np.save(shard / "labels.npy", rng.integers(0, 5, (n, SIZE, SIZE), dtype=np.uint8))
    write_json(shard / "index.json", {"cases": ["c"], "case_of_slice": [0] * n, "slice_of_case": list(range(n)),
                                      "shape": [n, 3, SIZE, SIZE], "dtype": "float16"})
    dataset = SliceDataset(shard, augment=AugmentConfig(), seed=0)
    sampler = StreamSampler(len(dataset), 0, 2)
    seen, t0 = 0, time.perf_counter()
    for step in range(batches):
        seen += collate(dataset, sampler.draw(step))["image"].shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "preprocess.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = make_ct(tmp / "ct_0000.nii.gz", args.depth)
        raw_mb = 512 * 512 * args.depth * 2 / 1e6
        file_mb = path.stat().st_size / 1e6
        ours(path, "none")  # warm-up: imports, allocator, page cache
        # interleaved repeats, so a change in machine load hits every method alike
        times: dict[str, list[float]] = {"floor": [], "ours": [], "crop": [], "base": []}
        for _ in range(args.repeats):
            times["floor"].append(timed(lambda: gzip_floor(path))[0])
            t, slices = timed(lambda: ours(path, "none"))
            times["ours"].append(t)
            times["crop"].append(timed(lambda: ours(path, "body"))[0])
            t, reference = timed(lambda: baseline(path))
            times["base"].append(t)
        t_floor, t_ours, t_crop, t_base = (statistics.median(times[k]) for k in ("floor", "ours", "crop", "base"))
        diff = float(np.abs(np.asarray(slices, np.float64) - reference).mean())
        loader = loader_throughput(tmp)
    train_step = _train_step_seconds()
    result = {
        "volume": f"512x512x{args.depth} int16 CT-like .nii.gz",
        "uncompressed_mb": round(raw_mb, 1),
        "file_mb": round(file_mb, 1),
        "baseline_s_per_volume": round(t_base, 3),
        "ours_s_per_volume": round(t_ours, 3),
        "ours_body_crop_s_per_volume": round(t_crop, 3),
        "speedup": round(t_base / t_ours, 2),
        "speedup_with_body_crop": round(t_base / t_crop, 2),
        "gzip_floor_s_per_volume": round(t_floor, 3),
        "ours_over_floor": round(t_ours / t_floor, 2),
        "volumes_per_s": round(1.0 / t_ours, 3),
        "mb_per_s": round(raw_mb / t_ours, 1),
        "mb_per_s_compressed": round(file_mb / t_ours, 1),
        "mean_abs_diff_vs_baseline": round(diff, 4),
        "loader_slices_per_s": round(loader, 1),
        "slices_per_train_step": 4,
        "loader_steps_per_s": round(loader / 4, 1),
        "train_step_s_cpu": train_step,
        "loader_over_train_step_demand": None if not train_step else round(loader * train_step / 4, 1),
        "inflate": _inflate_name(),
        "repeats": args.repeats,
        "torch_threads": 1,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _inflate_name() -> str:
    from sasan.data.volume import gzip_codec

    return "python-isal" if gzip_codec()[0] is not gzip.decompress else "zlib (stdlib)"


def _train_step_seconds() -> float | None:
    """The SASAN step time on CPU recorded by bench/train_step.py, if present (for comparison)."""
    try:
        data = json.loads((HERE / "results" / "train_step.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data.get("cpu_sasan_s_per_it") or (data.get("runs", {}).get("cpu/sasan") or {}).get("s_per_it")


if __name__ == "__main__":
    sys.exit(main())
