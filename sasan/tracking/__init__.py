"""MLflow tracking, the pyfunc model and the gated registry.

- :mod:`sasan.tracking.runs`: :class:`~sasan.tracking.runs.Tracker` (one run per pipeline
  execution, re-opened by id), run reference files, the default local store.
- :mod:`sasan.tracking.provenance`: git commit and DVC data hash tags.
- :mod:`sasan.tracking.pyfunc_model`: the bundle as an MLflow pyfunc with a signature.
- :mod:`sasan.tracking.registry`: register a version, move ``champion`` only past the gate.

Nothing is imported here, so ``sasan.tracking.provenance`` stays usable without loading
MLflow."""
