"""oneDNN against the C correlation kernel for the input gradient of the convolutions with
few input channels in a SASAN training step (sasan/models/few_channel.py).

fp32 CPU, the step's own shapes (256x256, batch 2: the decodes that carry map gradients run
at batch 4). The two implementations are interleaved round by round so that load from
other processes hits them alike; min over --repeats rounds (and the median, to show the
noise), and the max error relative to the gradient's scale. Runs with glibc huge pages, as
`sasan train` does (sasan/hugepages.py; the kernel reads rows from many planes, which
costs TLB misses with 4 KB pages). Writes bench/results/few_channel.json.

    python bench/few_channel.py [--repeats 9] [--threads 2]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sasan.hugepages import reexec_with_hugepages  # noqa: E402
from sasan.models import winograd_kernels  # noqa: E402
from sasan.train.device import keep_freed_memory  # noqa: E402

# (name, N, C_in, C_out, input size, kernel, padding)
SHAPES = [
    ("norm K->64 map conv, 256x256", 4, 8, 64, 256, 3, 1),
    ("norm K->64 map conv, 128x128", 4, 8, 64, 128, 3, 1),
    ("norm K->64 map conv, 64x64", 4, 8, 64, 64, 3, 1),
    ("attention 5x5 input conv, [t, fake_t]", 4, 3, 32, 260, 5, 0),
    ("attention 5x5 input conv, fake_s", 2, 3, 32, 260, 5, 0),
    ("attention K->classes read-out", 4, 8, 5, 258, 3, 0),
    ("synthesis 7x7 input conv, [t, x, fake_t]", 6, 3, 32, 262, 7, 0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "few_channel.json")
    args = ap.parse_args()
    reexec_with_hugepages()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    if not winograd_kernels.correlation_available():
        sys.exit("bench/few_channel.py: no AVX-512 build of the C kernels on this machine")
    backward = torch.ops.aten.convolution_backward
    rows = []
    for name, n, c_in, c_out, size, k, pad in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c_in, size, size, generator=gen)
        w = torch.randn(c_out, c_in, k, k, generator=gen)
        out = size + 2 * pad - k + 1
        dy = torch.randn(n, c_out, out, out, generator=gen)
        impls = {
            "onednn": lambda: backward(dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                                       [True, False, False])[0],
            "c_kernel": lambda: winograd_kernels.conv_input_grad(dy, w, pad),
        }
        ref = impls["onednn"]()
        err = float((impls["c_kernel"]() - ref).abs().max() / ref.abs().max())
        times: dict[str, list[float]] = {key: [] for key in impls}
        for _ in range(args.repeats):
            for key, fn in impls.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        row = {"name": name, "shape": [n, c_in, c_out, size, k, pad], "max_rel_err": err}
        for key, ts in times.items():
            row[f"{key}_ms"] = round(1e3 * min(ts), 2)
            row[f"{key}_ms_median"] = round(1e3 * statistics.median(ts), 2)
        row["speedup"] = round(row["onednn_ms"] / row["c_kernel_ms"], 2)
        rows.append(row)
        print(f"{name:42s} oneDNN {row['onednn_ms']:7.2f} ms  C {row['c_kernel_ms']:7.2f} ms  "
              f"{row['speedup']:.2f}x  err {err:.1e}", flush=True)
    result = {"machine": {"cpu": platform.machine(), "threads": args.threads, "torch": torch.__version__},
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
              "repeats": args.repeats, "input_gradient": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
