"""Stage functions, one module per stage, one contract for all:

    run(inputs, outputs, cfg, tracker, ...) -> summary dict

``inputs``/``outputs`` are small frozen dataclasses of paths (and references), ``cfg`` the
resolved :class:`sasan.config.Config`, ``tracker`` the pipeline execution's MLflow parent
run (:class:`sasan.tracking.runs.Tracker`, disabled when there is none). MLflow logging
happens inside the stage, once; stages that train models open one child run per variant.
The CLI (``sasan <stage>``, driven by dvc.yaml) and the Kubeflow components are adapters
that build these arguments and call ``run``; they read the environment, stages never do.

Stages: :mod:`~sasan.stages.phantom`, :mod:`~sasan.stages.ingest`,
:mod:`~sasan.stages.validate`, :mod:`~sasan.stages.preprocess`, :mod:`~sasan.stages.train`,
:mod:`~sasan.stages.evaluate`, :mod:`~sasan.stages.register`; the parent run itself:
:mod:`~sasan.stages.pipeline_run`."""
