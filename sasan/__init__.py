"""SASAN: Self-Attentive Spatial Adaptive Normalization for cross-modality domain adaptation.

The package is a library first: every stage is a plain function, and the ``sasan`` command,
``dvc.yaml`` and the Kubeflow components are thin adapters over it. Nothing happens at
import time.
"""

__version__ = "0.1.0"
