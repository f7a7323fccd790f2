"""Time whole-volume inference, what ``sasan translate`` and the evaluate stage do per volume
(METHOD.md 4.5): load the model bundle; prepare the volume (nibabel read, RAS, body crop,
resize, normalise, 3-slice stacks); run A_t -> S_s -> U-Net over every slice in batches;
put the labels and the translation back on the input grid; write both as NIfTI.

Scales, each on a phantom CT volume of the size its data would have:

* ``demo``: ``params.yaml`` (64 px, the demo's widths) on a demo-size CT (176 x 176 x 96);
* ``paper``: ``profiles/mmwhs-gpu.yaml`` (256 px, the paper's widths) on a CT of MM-WHS size
  (512 x 512 x 279).

The weights are random: a forward pass costs the same whatever they are. Each scale runs in
its own process (its peak RSS is its own): a first, cold pass (what one ``sasan translate``
call pays after start-up), then ``--repeats`` warm passes (min and median), then the whole
``sasan translate`` command as a user runs it (Python start-up and imports included). On CUDA
the runtime is ``sasan translate``'s: bf16 autocast and channels_last. Writes
``bench/results/inference.json``.

    python bench/inference.py [--repeats 3] [--scales demo paper] [--device cpu|cuda] [--no-cli]

Runs already in the output file for other scales or devices are kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# scale -> (profile, phantom size knob: 128 = CT 176x176x96, 372 = CT 512x512x279)
SCALES = {"demo": ("params.yaml", 128), "paper": ("profiles/mmwhs-gpu.yaml", 372)}


def volume(scale: str, work: Path) -> Path:
    """One phantom CT volume for ``scale`` (generated once, kept under ``work``)."""
    from sasan.data.phantom import generate_phantom

    out = work / f"ct_{scale}"
    if not out.is_dir():
        generate_phantom(out, cases=1, domains=("ct",), size=SCALES[scale][1])
    return next(out.rglob("ct_001*.nii.gz"))


def bundle_file(scale: str, path: Path) -> None:
    """A SASAN bundle (A_t, S_s, U-Net) with the scale's networks and random weights."""
    import torch

    from sasan.bundle import ModelBundle, save_bundle
    from sasan.config import load_config
    from sasan.models import build_attention, build_segmenter, build_synthesis

    cfg = load_config(ROOT / SCALES[scale][0])
    m = cfg.model
    torch.manual_seed(0)
    save_bundle(path, ModelBundle(cfg, "sasan", build_segmenter(m),
                                  build_attention(m),
                                  build_synthesis(m)))


def one(scale: str, device: str, repeats: int, work: Path) -> dict:
    import nibabel as nib
    import torch

    from sasan.bundle import load_bundle
    from sasan.data.preprocess import prepare_volume
    from sasan.inference import predict_stacks, save_nifti
    from sasan.models import count_parameters
    from sasan.train.device import resolve_runtime

    image = volume(scale, work)
    rt = resolve_runtime(device)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    tmp = Path(tempfile.mkdtemp(dir=work))
    bundle_path = tmp / "model.pt"
    bundle_file(scale, bundle_path)

    def timed_pass() -> tuple[dict, Any]:
        t = {}
        tic = time.perf_counter()
        bundle = load_bundle(bundle_path, map_location=rt.device).to(rt.device)
        t["load_bundle"] = time.perf_counter() - tic
        tic = time.perf_counter()
        prepared = prepare_volume(image, bundle.cfg.preprocess, "ct")
        t["prepare"] = time.perf_counter() - tic
        tic = time.perf_counter()
        labels, translated = predict_stacks(bundle, prepared.stacks, rt, bundle.cfg.evaluate.batch_size)
        sync()
        t["networks"] = time.perf_counter() - tic
        tic = time.perf_counter()
        label_img, translated_img = prepared.restore(labels), prepared.restore_intensity(translated)
        t["restore"] = time.perf_counter() - tic
        tic = time.perf_counter()
        save_nifti(label_img, tmp / "labels.nii.gz")
        save_nifti(translated_img, tmp / "translated.nii.gz")
        t["save_nifti"] = time.perf_counter() - tic
        t["total"] = sum(t.values())
        t["slices"] = len(labels)
        return t, bundle

    first, bundle = timed_pass()
    passes = [timed_pass()[0] for _ in range(repeats)]
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if rt.device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    stages = [k for k in first if k not in ("total", "slices")]
    slices = first["slices"]
    run = {"scale": scale, "profile": SCALES[scale][0], "device": str(rt.device), "bf16": rt.bf16,
           "channels_last": rt.channels_last, "threads": torch.get_num_threads(), "repeats": repeats,
           "volume_shape": list(nib.load(image).shape), "slices": slices,
           "image_size": bundle.cfg.preprocess.image_size, "batch_size": bundle.cfg.evaluate.batch_size,
           "params": {n: count_parameters(getattr(bundle, n)) for n in ("att_t", "syn_s", "segmenter")},
           "first_pass_s": first["total"], "first_pass": {k: first[k] for k in stages},
           "networks_ms_per_slice": 1e3 * first["networks"] / slices}
    if passes:   # warm passes: min over them, and the median of the totals
        total = [p["total"] for p in passes]
        run.update({"s_per_volume": min(total), "s_per_volume_median": statistics.median(total),
                    "warm_pass": {k: min(p[k] for p in passes) for k in stages},
                    "networks_ms_per_slice": 1e3 * min(p["networks"] for p in passes) / slices})
    run.update({"peak_mem_mb": peak_mb, "_bundle": str(bundle_path), "_image": str(image)})
    return run


def cli_wall(run: dict, device: str) -> float:
    """Wall time of the whole ``sasan translate`` command (start-up, imports, one volume)."""
    out = Path(run["_bundle"]).parent
    cmd = [sys.executable, "-m", "sasan", "translate", run["_image"], str(out / "cli_translated.nii.gz"),
           "--bundle", run["_bundle"], "--labels", str(out / "cli_labels.nii.gz"), "--device", device]
    tic = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - tic
    if res.returncode:
        sys.exit(f"sasan translate failed:\n{res.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="warm passes after the first (0: the first only)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the whole `sasan translate` command")
    ap.add_argument("--scales", nargs="+", default=["demo", "paper"], choices=sorted(SCALES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "inference")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "inference.json")
    ap.add_argument("--child", metavar="SCALE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(one(args.child, args.device, args.repeats, args.work)))
        return

    sys.path.insert(0, str(HERE))
    from adaptation import machine

    # runs of other scales or devices already recorded stay; each run says when and where it ran
    report: dict = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    for scale in args.scales:
        cmd = [sys.executable, __file__, "--child", scale, "--device", args.device, "--repeats", str(args.repeats),
               "--work", str(args.work)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            sys.exit(f"benchmark child failed:\n{res.stderr[-3000:]}")
        run = json.loads(res.stdout.strip().splitlines()[-1])
        if not args.no_cli:
            run["sasan_translate_wall_s"] = cli_wall(run, args.device)
        run.update(date=time.strftime("%Y-%m-%d"), machine=machine())
        shutil.rmtree(Path(run.pop("_bundle")).parent)
        run.pop("_image")
        report["runs"][f"{args.device}/{scale}"] = run
        parts = [f"first pass {run['first_pass_s']:.2f} s (" + ", ".join(
            f"{k} {v:.2f}" for k, v in run["first_pass"].items()) + ")"]
        if "s_per_volume" in run:
            parts.append(f"warm {run['s_per_volume']:.2f} s/volume")
        if "sasan_translate_wall_s" in run:
            parts.append(f"`sasan translate` {run['sasan_translate_wall_s']:.1f} s")
        print(f"{args.device}/{scale}: {run['volume_shape']} -> {run['slices']} slices of {run['image_size']} px: "
              + ", ".join(parts) + f", networks {run['networks_ms_per_slice']:.1f} ms/slice, "
              f"peak {run['peak_mem_mb']:.0f} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
