"""nn.Conv2d (mkldnn) against WinogradConv2d F(4x4,3x3) and F(2x2,3x3) on SASAN's 3x3 convs.

fp32 CPU, with 2 threads and with 1 thread (--threads 2,1). For each shape: forward (no grad) and forward +
backward (input, weight and bias gradients), the implementations interleaved round by
round so that load from other processes hits them alike; min over --repeats rounds (and
the median, to show the noise). Also the max error relative to the output scale.
Writes bench/results/winograd.json.

    python bench/winograd.py [--repeats 5] [--threads 2,1]

Large tensors are allocated and freed every call; glibc returns them to the OS and takes
page faults on the next call. Run once as is and once with e.g.
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 to see both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sasan.models.winograd import winograd_conv3x3  # noqa: E402

SHAPES = [  # (N, C_in, H, W, C_out)
    (2, 64, 256, 256, 128),
    (2, 64, 256, 256, 64),
    (2, 64, 128, 128, 256),
    (2, 64, 64, 64, 256),
    (2, 128, 64, 64, 256),
    (2, 128, 128, 128, 128),
    (2, 32, 256, 256, 32),
    (2, 16, 256, 256, 16),
]


def _time(fn, grad_out: torch.Tensor | None) -> float:
    t = time.perf_counter()
    if grad_out is None:
        with torch.no_grad():
            fn()
    else:
        fn().backward(grad_out)
    return time.perf_counter() - t


def run(shape, repeats: int) -> dict:
    n, c, h, w, k = shape
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, requires_grad=True)
    weight = (torch.randn(k, c, 3, 3) / (3 * c ** 0.5)).requires_grad_(True)
    bias = torch.randn(k, requires_grad=True)
    impls = {
        "conv2d": lambda: F.conv2d(x, weight, bias, padding=1),
        "winograd_f4": lambda: winograd_conv3x3(x, weight, bias, 4),
        "winograd_f2": lambda: winograd_conv3x3(x, weight, bias, 2),
    }
    with torch.no_grad():
        ref = impls["conv2d"]()
        errors = {name: ((f() - ref).abs().max() / ref.abs().max()).item()
                  for name, f in impls.items() if name != "conv2d"}
    grad_out = torch.randn_like(ref)
    times: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "fwd_bwd": []} for name in impls}
    for r in range(repeats + 1):          # round 0 is warm-up
        for mode, g in (("fwd", None), ("fwd_bwd", grad_out)):
            for name, f in impls.items():
                x.grad = weight.grad = bias.grad = None
                dt = _time(f, g)
                if r:
                    times[name][mode].append(dt)
    out = {"shape": {"N": n, "C_in": c, "H": h, "W": w, "C_out": k},
           "gflop_direct_fwd": 2 * n * h * w * c * k * 9 / 1e9, "rel_error": errors}
    for name, modes in times.items():
        out[name] = {mode: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v)}
                     for mode, v in modes.items()}
    return out


def table(repeats: int) -> list[dict]:
    rows = []
    head = (f"{'N,Cin,H,W->Cout':>22} | {'conv fwd':>9} {'F4 fwd':>8} {'F2 fwd':>8} | "
            f"{'conv f+b':>9} {'F4 f+b':>8} {'F2 f+b':>8} | {'x F4 fwd':>8} {'x F4 f+b':>8} | "
            f"{'err F4':>7} {'err F2':>7}")
    print(head)
    print("-" * len(head))
    for shape in SHAPES:
        res = run(shape, repeats)
        rows.append(res)
        ms = {(i, mode): res[i][mode]["min_ms"] for i in ("conv2d", "winograd_f4", "winograd_f2")
              for mode in ("fwd", "fwd_bwd")}
        n, c, h, w, k = shape
        print(f"{f'{n},{c},{h},{w}->{k}':>22} | {ms['conv2d', 'fwd']:9.1f} "
              f"{ms['winograd_f4', 'fwd']:8.1f} {ms['winograd_f2', 'fwd']:8.1f} | "
              f"{ms['conv2d', 'fwd_bwd']:9.1f} {ms['winograd_f4', 'fwd_bwd']:8.1f} "
              f"{ms['winograd_f2', 'fwd_bwd']:8.1f} | "
              f"{ms['conv2d', 'fwd'] / ms['winograd_f4', 'fwd']:8.2f} "
              f"{ms['conv2d', 'fwd_bwd'] / ms['winograd_f4', 'fwd_bwd']:8.2f} | "
              f"{res['rel_error']['winograd_f4']:7.1e} {res['rel_error']['winograd_f2']:7.1e}",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "winograd.json")
    args = ap.parse_args()
    load_start = os.getloadavg()
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s); ms, min over {args.repeats} rounds; x = speedup of F4")
        results[str(threads)] = table(args.repeats)
    meta = {"torch": torch.__version__, "repeats": args.repeats,
            "cpu": platform.processor() or platform.machine(),
            "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "times": "ms; min (and median) over repeats; fwd_bwd = forward + backward for "
                     "input, weight and bias"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results_by_threads": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
