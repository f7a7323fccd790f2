"""The full training recipe (METHOD.md section 4) for one variant:

1. pre-train A_s on labelled source slices, then freeze it;
2. joint adversarial training (G step, D step; constant-then-linear lr);
3. fake-source augmentation: target training slices -> G_s, pseudo-labels from A_t;
4. the detached U-Net on real source + fake source.

Every phase checkpoints and resumes; a finished phase is skipped on rerun. Checkpoints
record the settings and data that trained them (:mod:`sasan.train.fingerprint`); ones trained
with others are moved aside and the variant trains from scratch. Outputs in
``out_dir``: ``config.yaml`` (resolved), ``checkpoints/``, ``logs/*.tsv`` and ``*.png``
curves, ``samples/*.png``, ``model.pt`` (the bundle), ``summary.json``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from sasan.atomic import write_json
from sasan.bundle import ModelBundle, save_bundle
from sasan.config import Config, save_config
from sasan.models import build_networks, build_segmenter, count_parameters
from sasan.train.data import ArraySliceDataset, ConcatSlices
from sasan.train.device import Runtime, resolve_runtime
from sasan.train.diagnostics import attention_dice, foreground_fraction, labels_of, pooled_dice, predict_labels
from sasan.train.distributed import barrier, synchronizer
from sasan.train.fake_source import translate_to_source
from sasan.train.fingerprint import supersede_stale_checkpoints, training_record
from sasan.train.history import History
from sasan.train.joint import JointTrainer, make_optimizers
from sasan.train.loop import Phase, run_phase
from sasan.train.pictures import attention_grid, translation_grid
from sasan.train.prefetch import Prefetcher
from sasan.train.sampling import StreamSampler, collate
from sasan.train.schedule import make_scheduler
from sasan.train.supervised import attention_pretrain_loss, segmenter_loss, steps_for, supervised_phase
from sasan.train.variants import SEGMENTER_ONLY, variant_config

log = logging.getLogger(__name__)

MetricsFn = Callable[[str, int, dict[str, float]], None]


@dataclass
class TrainData:
    """Slice data sets (``len``, ``[i]``, ``set_epoch``) for one source -> target pair."""

    source: Any                       # labelled source training slices (augmented)
    target: Any                       # target training slices (augmented); labels never read
    target_plain: Any = None          # target training slices without augmentation (fake source)
    target_labelled: Any = None       # only for the upper-bound baseline
    source_test: Any = None           # labelled source test slices: A_s's held-out Dice
    # target labels for diagnosis only (reported, never used to choose anything)
    target_test: Any = None
    target_plain_truth: Any = None    # labels of target_plain, slice for slice


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}/{key}"))
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def open_shards(shards: Path, cfg: Config, variant: str) -> TrainData:
    from sasan.data.dataset import SliceDataset  # heavy imports only when used
    from sasan.data.shards import check_paired_shards

    src, tgt, seed = cfg.experiment.source, cfg.experiment.target, cfg.experiment.seed
    aug = cfg.train.augment
    paired = cfg.experiment.mode == "paired"
    if paired:      # the joint step pairs slice i of the source with slice i of the target
        check_paired_shards(shards / src / "train", shards / tgt / "train")
    return TrainData(
        source=SliceDataset(shards / src / "train", augment=aug, with_labels=not paired, seed=seed),
        # paired mode: the same seed gives both domains the same augmentation per index
        target=SliceDataset(shards / tgt / "train", augment=aug, with_labels=False, seed=seed if paired else seed + 1),
        target_plain=SliceDataset(shards / tgt / "train", augment=None, with_labels=False, seed=seed),
        target_labelled=(SliceDataset(shards / tgt / "train", augment=aug, with_labels=True, seed=seed)
                         if variant == "upper_bound" else None),
        source_test=_labelled(shards / src / "test"),
        target_test=_labelled(shards / tgt / "test"),
        target_plain_truth=_labelled(shards / tgt / "train"),
    )


def _labelled(shard_dir: Path) -> Any:
    """A shard's slices with labels and no augmentation, or None where there are none."""
    from sasan.data.dataset import SliceDataset

    if not (shard_dir / "images.npy").is_file():
        return None
    data = SliceDataset(shard_dir, augment=None, with_labels=True)
    return data if data.has_labels else None


class Trainer:
    """Runs the recipe of one variant into ``out_dir``."""

    def __init__(self, cfg: Config, out_dir: Path, variant: str = "sasan", *, on_log: Optional[MetricsFn] = None,
                 rank: int = 0, world_size: int = 1, progress: bool = True, runtime: Optional[Runtime] = None,
                 on_checkpoint: Optional[Callable[[Path], None]] = None, data_identity: Any = None):
        self.variant = variant
        self.cfg = variant_config(cfg, variant)
        # recorded in every phase checkpoint: a resume only continues checkpoints trained with
        # these settings on this data (``data_identity``: the shards' DataIdentity, if known)
        self.checkpoint_record = training_record(self.cfg, variant, getattr(data_identity, "digest", None))
        self.out = Path(out_dir)
        self.on_log, self.rank, self.world_size, self.progress = on_log, rank, world_size, progress
        self.on_checkpoint = on_checkpoint                  # main process, after each checkpoint save
        self.sync = synchronizer(world_size)                # data-parallel replicas kept identical
        tc = self.cfg.train
        self.rt = runtime or resolve_runtime(tc.device, tc.bf16, tc.channels_last)
        self.summary: dict[str, Any] = {"variant": variant, "device": str(self.rt.device)}

    # -------------------------------------------------------------- helpers
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _log(self, history: History) -> MetricsFn:
        def fn(phase: str, step: int, values: dict[str, float]) -> None:
            if self.is_main:
                history.add(step, values)
            if self.on_log is not None:
                self.on_log(phase, step, values)
        return fn

    def _run(self, phase: Phase) -> dict[str, float]:
        phase.extra = {**(phase.extra or {}), **self.checkpoint_record}
        history = History(self.out / "logs" / f"{phase.name}.tsv")
        last = run_phase(phase, self._log(history), is_main=self.is_main, progress=self.progress,
                         on_checkpoint=self.on_checkpoint, label=f"{self.variant}/{phase.name}")
        if self.is_main:
            history.plot(self.out / "logs" / f"{phase.name}.png", f"{self.variant}: {phase.name}")
        return last

    def _ckpt(self, name: str) -> Path:
        return self.out / "checkpoints" / f"{name}.pt"

    # -------------------------------------------------------------- phases
    def pretrain_attention(self, nets, data: TrainData) -> None:
        c = self.cfg.train.pretrain
        steps = steps_for(c.epochs, len(data.source), c.batch_size, self.world_size)
        phase = supervised_phase(
            "pretrain_attention", nets.att_s, attention_pretrain_loss, data.source, steps=steps,
            batch_size=c.batch_size, lr=c.lr, seed=self.cfg.experiment.seed + 11, runtime=self.rt,
            checkpoint=self._ckpt("pretrain_attention"), checkpoint_every=self.cfg.train.checkpoint_every,
            log_every=self.cfg.train.log_every, dice_weight=self.cfg.train.losses.dice_weight,
            orth_weight=self.cfg.train.losses.orthogonality, rank=self.rank, world_size=self.world_size,
            num_workers=self.cfg.train.num_workers, sync=self.sync, lr_schedule=c.lr_schedule)
        self.summary["pretrain_attention"] = {"steps": steps, **self._run(phase)}
        held_out = attention_dice(nets.att_s, data.source_test, self.rt, self.cfg.model.num_classes)
        if held_out is not None:
            self._diagnose("A_s_source_test", held_out)
            log.info("%s: A_s after pre-training: source test Dice %.3f", self.variant, held_out["dice"]["mean"])

    def joint(self, nets, data: TrainData) -> JointTrainer:
        c, seed = self.cfg.train.joint, self.cfg.experiment.seed
        paired = self.cfg.experiment.mode == "paired"
        per_epoch = max(1, len(data.target) // (c.batch_size * self.world_size))
        steps = min(c.epochs * per_epoch, c.max_steps) if c.max_steps else c.epochs * per_epoch
        opt_g, opt_d = make_optimizers(nets, c.lr, c.betas, c.weight_decay, paired)
        sched_g, sched_d = make_scheduler(opt_g, steps), make_scheduler(opt_d, steps)
        trainer = JointTrainer(nets, self.cfg.train.losses, self.rt, opt_g, opt_d, paired=paired, sync=self.sync)
        tgt_sampler = StreamSampler(len(data.target), seed + 21, c.batch_size, self.rank, self.world_size)
        src_sampler = (tgt_sampler if paired else
                       StreamSampler(len(data.source), seed + 22, c.batch_size, self.rank, self.world_size))

        def batch_at(step: int) -> dict[str, torch.Tensor]:
            t = collate(data.target, tgt_sampler.draw(step))
            s = collate(data.source, src_sampler.draw(step))
            return {"x": s["image"], "y_x": s.get("label"), "t": t["image"]}

        batches = Prefetcher(batch_at, steps, self.cfg.train.num_workers)

        def step_fn(step: int) -> dict[str, float]:
            logs = trainer.step(batches.get(step))
            sched_g.step(), sched_d.step()
            logs["lr"] = sched_g.get_last_lr()[0]
            return logs

        def get_state() -> dict[str, Any]:
            return {"nets": nets.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                    "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict()}

        def set_state(s: dict[str, Any]) -> None:
            nets.load_state_dict(s["nets"])
            opt_g.load_state_dict(s["opt_g"]), opt_d.load_state_dict(s["opt_d"])
            sched_g.load_state_dict(s["sched_g"]), sched_d.load_state_dict(s["sched_d"])

        phase = Phase("joint", steps, step_fn, get_state, set_state, self._ckpt("joint"),
                      self.cfg.train.checkpoint_every, self.cfg.train.log_every)
        last = self._run(phase)
        self.summary["joint"] = {"steps": steps, "steps_per_epoch": per_epoch, **last}
        if self.is_main:
            b = batch_at(0)
            sample = trainer.sample(b["x"], b["t"])
            self._pictures({**sample, "x": b["x"], "t": b["t"]})
        return trainer

    def _pictures(self, sample: dict[str, torch.Tensor]) -> None:
        e = self.cfg.experiment
        sample = dict(sample)
        samples = self.out / "samples"
        translation_grid(sample, samples / "translation.png", e.source, e.target)
        if "att_t_t" in sample:
            attention_grid(sample["t"][0], sample["att_t_t"][0], sample["seg_t_t"][0],
                           samples / "attention_target.png", f"A_t on a real {e.target} slice")
            attention_grid(sample["x"][0], sample["att_s_x"][0], sample["seg_s_x"][0],
                           samples / "attention_source.png", f"A_s on a real {e.source} slice")

    def segmenter(self, train_set: Any, source_test: Any = None, name: str = "segmenter"):
        """Train the detached U-Net; its pooled Dice on the labelled source test slices is a
        diagnostic (source labels only) of whether its schedule converged."""
        c = self.cfg.train.segmenter
        rt = self.rt.for_unet()
        unet = rt.prepare_module(build_segmenter(self.cfg.model))
        if self.sync is not None:
            self.sync.broadcast(unet)
        steps = steps_for(c.epochs, len(train_set), c.batch_size, self.world_size, c.max_steps)
        phase = supervised_phase(
            name, unet, segmenter_loss, train_set, steps=steps, batch_size=c.batch_size, lr=c.lr,
            seed=self.cfg.experiment.seed + 31, runtime=rt, checkpoint=self._ckpt(name),
            checkpoint_every=self.cfg.train.checkpoint_every, log_every=self.cfg.train.log_every,
            dice_weight=self.cfg.train.losses.dice_weight, rank=self.rank, world_size=self.world_size,
            num_workers=self.cfg.train.num_workers, sync=self.sync, lr_schedule=c.lr_schedule)
        self.summary[name] = {"steps": steps, "train_slices": len(train_set), **self._run(phase)}
        unet.eval()
        if source_test is not None and len(source_test) and self.is_main:
            dice = pooled_dice(predict_labels(unet, source_test, rt), labels_of(source_test),
                               self.cfg.model.num_classes)
            self._diagnose("U-Net_source_test", {"dice": dice})
            log.info("%s: U-Net source test Dice %.3f", self.variant, dice["mean"])
        return unet

    # -------------------------------------------------------------- recipe
    def run(self, data: TrainData) -> dict[str, Any]:
        if self.is_main:
            supersede_stale_checkpoints(self.out / "checkpoints", self.checkpoint_record)
        barrier()           # the other ranks look for checkpoints only once rank 0 has checked them
        seed_everything(self.cfg.experiment.seed)
        if self.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        paired = self.cfg.experiment.mode == "paired"
        if self.variant in SEGMENTER_ONLY:
            train_set = data.target_labelled if self.variant == "upper_bound" else data.source
            if train_set is None:
                raise ValueError("upper_bound needs labelled target training slices")
            # the upper bound learns the target: a source-test Dice would say nothing of its convergence
            unet = self.segmenter(train_set, None if self.variant == "upper_bound" else data.source_test)
            return self._finish(ModelBundle(self.cfg, self.variant, unet))

        w = self.cfg.train.losses
        n_cls = self.cfg.model.num_classes
        nets = self.rt.prepare_module(build_networks(self.cfg.model, seg_adversary=w.seg_adversarial > 0 and not paired))
        if self.sync is not None:
            self.sync.broadcast(nets)
        self.summary["parameters"] = {name: count_parameters(m) for name, m in nets.named_children()}
        if nets.att_s is not None and not paired:
            self.pretrain_attention(nets, data)
            if self.cfg.train.joint.init_target_attention == "source":
                # A_t starts from A_s: its maps then mean the same anatomy from step 0, which the
                # attention-consistency and pseudo-label terms assume; joint training adapts it.
                nets.att_t.load_state_dict(nets.att_s.state_dict())
        self.joint(nets, data)
        if nets.att_t is not None and not paired:
            self._diagnose("diagnosis_only_A_t_target_test",
                           attention_dice(nets.att_t, data.target_test, self.rt, n_cls))

        parts = [data.source]
        if self.cfg.train.segmenter.fake_source and not paired:
            images, labels = translate_to_source(nets, data.target_plain or data.target, self.rt,
                                                 progress=self.progress and self.is_main,
                                                 label=f"{self.variant}/fake-source")
            if labels is not None:
                seg = self.cfg.train.segmenter
                parts.append(ArraySliceDataset(images, labels, seed=self.cfg.experiment.seed + 2,
                                               augment=self.cfg.train.augment if seg.augment_fake_source else None))
                self.summary["fake_source_slices"] = len(images)
                pseudo = {"foreground_fraction": foreground_fraction(labels, n_cls)}
                if data.source_test is not None:
                    pseudo["source_test_foreground_fraction"] = foreground_fraction(labels_of(data.source_test), n_cls)
                if data.target_plain_truth is not None and len(data.target_plain_truth) == len(labels):
                    pseudo["diagnosis_only_dice"] = pooled_dice(labels, labels_of(data.target_plain_truth), n_cls)
                self._diagnose("pseudo_labels", pseudo)
        # paired mode trains and bundles no U-Net: its model translates only, scored by image metrics
        unet = self.segmenter(ConcatSlices(parts), data.source_test) if not paired else None
        bundle = ModelBundle(self.cfg, self.variant, unet, nets.att_t, nets.syn_s)
        return self._finish(bundle)

    def _diagnose(self, name: str, values: Optional[dict[str, Any]]) -> None:
        """Record a diagnostic in the summary and as metrics ``diagnostics/<name>/...``."""
        if values is None:
            return
        self.summary.setdefault("diagnostics", {})[name] = values
        flat = {k: v for k, v in _flatten(values, name).items() if np.isfinite(v)}
        if self.on_log is not None and self.is_main:
            self.on_log("diagnostics", 0, flat)

    def _finish(self, bundle: ModelBundle) -> dict[str, Any]:
        if self.is_main:
            save_bundle(self.out / "model.pt", bundle)
            write_json(self.out / "summary.json", self.summary)
        return self.summary
