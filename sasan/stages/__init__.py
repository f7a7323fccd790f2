"""Stage functions: ``run_*(inputs, outputs, params) -> summary``. The CLI, dvc.yaml and the
Kubeflow components are thin adapters over these."""
