"""Does channels_last pay on CPU? Times one training step of each phase at the demo scale
(params.yaml), in the default (contiguous) memory format and in channels_last:

* ``pretrain_attention``: A_s on a batch of 16 (seg loss + orthogonality), Adam;
* ``segmenter``: the U-Net on a batch of 16 (seg loss), Adam;
* ``joint``: one SASAN joint iteration (G step + D step) on a batch of 2.

The two formats alternate in ``--rounds`` rounds of ``--iters`` steps, so drift of a shared
machine hits both; the median over all steps is reported. The answer decides
``Runtime.for_unet`` (sasan/train/device.py): on CPU, channels_last for the U-Nets only. Writes bench/results/memory_format.json.

    python bench/memory_format.py [--iters 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def steps(channels_last: bool) -> dict:
    """phase -> a closure running one training step in the given memory format."""
    from sasan.config import load_config
    from sasan.models import build_networks, build_segmenter
    from sasan.train.device import Runtime
    from sasan.train.joint import JointTrainer, make_optimizers
    from sasan.train.supervised import attention_pretrain_loss, segmenter_loss

    cfg = load_config(ROOT / "params.yaml")
    size, c = cfg.preprocess.image_size, cfg.model.num_classes
    rt = Runtime(torch.device("cpu"), bf16=False, channels_last=channels_last)
    torch.manual_seed(0)

    def supervised(model, loss_fn, batch):
        model = rt.prepare_module(model)
        opt = torch.optim.Adam(model.parameters(), lr=4e-4)
        x = rt.batch(torch.rand(batch, 3, size, size) * 2 - 1)
        y = torch.randint(0, c, (batch, size, size))

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x, y, cfg.train.losses.dice_weight, cfg.train.losses.orthogonality)[0].backward()
            opt.step()
        return step

    nets = rt.prepare_module(build_networks(cfg.model))
    j = cfg.train.joint
    opt_g, opt_d = make_optimizers(nets, j.lr, j.betas, j.weight_decay, False)
    trainer = JointTrainer(nets, cfg.train.losses, rt, opt_g, opt_d)
    jb = {"x": torch.rand(j.batch_size, 3, size, size) * 2 - 1, "t": torch.rand(j.batch_size, 3, size, size) * 2 - 1,
          "y_x": torch.randint(0, c, (j.batch_size, size, size))}
    return {
        "pretrain_attention": (cfg.train.pretrain.batch_size, supervised(
            build_networks(cfg.model).att_s, attention_pretrain_loss, cfg.train.pretrain.batch_size)),
        "segmenter": (cfg.train.segmenter.batch_size, supervised(
            build_segmenter(cfg.model), segmenter_loss, cfg.train.segmenter.batch_size)),
        "joint": (j.batch_size, lambda: trainer.step(jb)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "memory_format.json")
    args = ap.parse_args()
    from adaptation import machine

    fmts = {"contiguous": steps(False), "channels_last": steps(True)}
    times: dict = {f: {p: [] for p in fmts[f]} for f in fmts}
    for f in fmts:                          # warm-up: allocations, oneDNN kernel selection
        for _, step in fmts[f].values():
            step(), step()
    for r in range(args.rounds):
        for f in fmts:
            for phase, (_, step) in fmts[f].items():
                for _ in range(args.iters):
                    tic = time.perf_counter()
                    step()
                    times[f][phase].append(time.perf_counter() - tic)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    res = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "_machine": machine(),
           "iters": args.iters, "rounds": args.rounds, "phases": {}}
    for phase, (batch, _) in fmts["contiguous"].items():
        med = {f: statistics.median(times[f][phase]) for f in fmts}
        res["phases"][phase] = {"batch_size": batch, "s_per_step": med,
                                "channels_last_speedup": med["contiguous"] / med["channels_last"]}
        print(f"{phase:20s} batch {batch:2d}: contiguous {med['contiguous']:.4f} s, channels_last "
              f"{med['channels_last']:.4f} s ({res['phases'][phase]['channels_last_speedup']:.2f}x)")
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
