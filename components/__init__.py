"""Kubeflow components of the SASAN pipeline: one per stage, each a thin adapter over the
stage function in ``sasan`` (bodies in :mod:`components.data`, :mod:`components.model`,
:mod:`components.tracking`).

The base image is a compile-time setting: :func:`make_components` decorates the bodies for
one image reference, which should be immutable (``REGISTRY/sasan:<git sha>`` or a digest).
Nothing is decorated at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import data, model, tracking

DEFAULT_IMAGE = "sasan:dev"   # placeholder; `sasan pipeline compile` passes REGISTRY/sasan:<git sha>

BODIES = {
    "configure": data.configure,
    "start_run": tracking.start_run,
    "ingest": data.ingest,
    "validate": data.validate,
    "preprocess": data.preprocess,
    "train": model.train,
    "evaluate": model.evaluate,
    "register": tracking.register,
}


@dataclass(frozen=True)
class Components:
    image: str
    configure: Any
    start_run: Any
    ingest: Any
    validate: Any
    preprocess: Any
    train: Any
    evaluate: Any
    register: Any


def make_components(image: str = DEFAULT_IMAGE) -> Components:
    """Every component, with ``image`` as base image. The image already holds sasan, kfp and
    their pinned dependencies, so nothing is pip-installed at run time."""
    from kfp import dsl

    if not image or any(c.isspace() for c in image):
        raise ValueError(f"not an image reference: {image!r}")
    made = {name: dsl.component(body, base_image=image, install_kfp_package=False)
            for name, body in BODIES.items()}
    return Components(image=image, **made)
