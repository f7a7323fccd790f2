"""nn.Conv2d (oneDNN) against Winograd F(4x4,3x3) on the 3x3 convs of a SASAN training step.

fp32 CPU. Implementations: ``conv2d`` (oneDNN), ``f4_c`` (Winograd, tile transforms in C,
sasan/models/winograd_kernels.py), ``f4_torch`` (Winograd, transforms with PyTorch ops).
For each shape: forward (no grad) and forward + backward (input, weight and bias
gradients), the implementations interleaved round by round so that load from other
processes hits them alike; min over --repeats rounds (and the median, to show the noise).
Also the max error relative to the output scale. Freed memory is kept for reuse as in
training (sasan.train.device.keep_freed_memory). Writes bench/results/winograd.json; its
fwd_bwd speedups choose the eligibility thresholds in sasan/models/winograd.py.

    python bench/winograd.py [--repeats 5] [--threads 2]
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

from sasan.models import winograd_kernels  # noqa: E402
from sasan.models.winograd import winograd_conv3x3  # noqa: E402
from sasan.train.device import keep_freed_memory  # noqa: E402

# (N, C_in, H, W, C_out): the zero-padded 3x3 convs of one joint step at 256x256, batch 2
# (N = 4: translation and identity batched; N = 2: the reconstruction pass)
SHAPES = [
    (4, 64, 256, 256, 128),   # block_full norm_0 gamma/beta
    (4, 64, 256, 256, 96),    # block_full norm_s gamma/beta with conv_s folded in
    (4, 64, 256, 256, 64),    # block_full norm_1 gamma/beta
    (4, 64, 256, 256, 32),    # block_full conv_0
    (4, 32, 256, 256, 32),    # block_full conv_1
    (4, 8, 256, 256, 64),     # SASAN norms' shared conv (K = 8 maps)
    (4, 64, 128, 128, 256),   # block_half norm_0 gamma/beta
    (4, 128, 128, 128, 64),   # block_half conv_0
    (4, 64, 128, 128, 64),    # block_half conv_1
    (4, 8, 128, 128, 64),
    (4, 64, 64, 64, 256),     # block_quarter gamma/beta
    (4, 128, 64, 64, 128),    # block_quarter convs
    (4, 8, 64, 64, 64),
    (2, 64, 256, 256, 128),
    (2, 32, 256, 256, 32),
]
IMPLS = ("conv2d", "f4_c", "f4_torch")


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
        "f4_c": lambda: winograd_conv3x3(x, weight, bias, 4, compiled=True),
        "f4_torch": lambda: winograd_conv3x3(x, weight, bias, 4, compiled=False),
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
    head = (f"{'N,Cin,H,W->Cout':>20} | {'conv fwd':>8} {'C fwd':>7} {'torch fwd':>9} | "
            f"{'conv f+b':>8} {'C f+b':>7} {'torch f+b':>9} | {'x C f+b':>7} | {'err C':>7}")
    print(head)
    print("-" * len(head))
    for shape in SHAPES:
        res = run(shape, repeats)
        rows.append(res)
        ms = {(i, mode): res[i][mode]["min_ms"] for i in IMPLS for mode in ("fwd", "fwd_bwd")}
        res["speedup_fwd_bwd_c"] = ms["conv2d", "fwd_bwd"] / ms["f4_c", "fwd_bwd"]
        n, c, h, w, k = shape
        print(f"{f'{n},{c},{h},{w}->{k}':>20} | {ms['conv2d', 'fwd']:8.1f} {ms['f4_c', 'fwd']:7.1f} "
              f"{ms['f4_torch', 'fwd']:9.1f} | {ms['conv2d', 'fwd_bwd']:8.1f} {ms['f4_c', 'fwd_bwd']:7.1f} "
              f"{ms['f4_torch', 'fwd_bwd']:9.1f} | {res['speedup_fwd_bwd_c']:7.2f} | "
              f"{res['rel_error']['f4_c']:7.1e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "winograd.json")
    args = ap.parse_args()
    if not winograd_kernels.available():
        sys.exit("bench/winograd.py: the Winograd C kernels are not available (no C compiler?)")
    kept = keep_freed_memory()
    load_start = os.getloadavg()
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s); ms, min over {args.repeats} rounds; x = speedup of F4 (C)")
        results[str(threads)] = table(args.repeats)
    meta = {"torch": torch.__version__, "repeats": args.repeats,
            "cpu": platform.processor() or platform.machine(),
            "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
            "keep_freed_memory": kept, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "times": "ms; min (and median) over repeats; fwd_bwd = forward + backward for "
                     "input, weight and bias"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results_by_threads": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
