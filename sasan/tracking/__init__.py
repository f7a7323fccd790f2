"""MLflow tracking, lineage, the pyfunc model and the gated registry, one concept per module:

- :mod:`~sasan.tracking.client`: one-line errors, redacted URIs, the default local store.
- :mod:`~sasan.tracking.names`: what MLflow accepts as names and values.
- :mod:`~sasan.tracking.experiments`: experiments and their saved runs-table view.
- :mod:`~sasan.tracking.run_ref`: the run reference file that carries a run id between stages.
- :mod:`~sasan.tracking.runs`: :class:`~sasan.tracking.runs.Tracker` (a parent run per
  pipeline execution, a child run per variant).
- :mod:`~sasan.tracking.lineage` (and :mod:`~sasan.tracking.provenance`): code, data,
  image and Kubeflow lineage of a run.
- :mod:`~sasan.tracking.pyfunc_model`: the bundle as an MLflow pyfunc with a signature.
- :mod:`~sasan.tracking.registry`: register a version, move ``champion`` only past the gate.

Nothing is imported here, so ``sasan.tracking.lineage`` stays usable without loading MLflow."""
