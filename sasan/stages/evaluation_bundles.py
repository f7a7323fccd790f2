"""What both evaluations (segmentation, :mod:`sasan.stages.evaluate`; paired translation,
:mod:`sasan.stages.evaluate_paired`) read before they run a model: each bundle's kind and
digest, and the raw data set's manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sasan.atomic import read_json
from sasan.bundle import ModelBundle, load_bundle
from sasan.config import Config
from sasan.data.manifest import sha256_file as file_sha256


@dataclass(frozen=True)
class BundleInfo:
    """What evaluate needs to know of a bundle before it runs it."""

    path: Path
    variant: str
    sha256: str                     # of the model.pt file: register checks it is the one evaluated
    cfg: Config                     # the bundle's own config (preprocess, model.num_classes)
    # the networks as loaded here (CPU): evaluation runs these, not a second read of the file
    bundle: ModelBundle = field(compare=False, repr=False)
    segments: bool = True           # has a U-Net (False: a paired-mode model, translation only)
    translates: bool = True         # has S_s (False: no_adaptation, upper_bound)

    def networks(self, device: Any) -> ModelBundle:
        """The bundle's networks on ``device``."""
        return self.bundle.to(device)


def inspect_bundles(models: dict[str, Path]) -> dict[str, BundleInfo]:
    """Each bundle's variant, file digest, config and kind, with its networks loaded on the
    CPU (one read per file), in ``models`` order."""
    infos = {}
    for method, path in models.items():
        bundle = load_bundle(path, map_location="cpu")
        infos[method] = BundleInfo(Path(path), bundle.variant, file_sha256(path), bundle.cfg, bundle,
                                   bundle.segments, bundle.translates)
    return infos


def read_manifest_file(raw_dir: Path) -> dict[str, Any]:
    manifest_path = raw_dir / "manifest.json"
    return read_json(manifest_path, missing="manifest.json not found: run `sasan ingest` first",
                     invalid="manifest is not valid JSON")
