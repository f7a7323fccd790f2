"""Lifecycle component: the exit task of the pipeline's ``dsl.ExitHandler``.

It runs after everything inside the handler (every step of the pipeline), whether that succeeded, failed or was
cancelled, and ends the pipeline's MLflow parent run accordingly: FINISHED when every step
succeeded, FAILED (KILLED when cancelled) otherwise, with the failing step's name as a tag.
Without it, a failed step would leave the parent run RUNNING forever.

The body runs inside the project image (see :mod:`components.data`).
"""

from kfp import dsl

# the tags start_run puts the Kubeflow run id in (sasan.tracking.lineage; the older name too),
# repeated in the body: a component body sees nothing of its module
PIPELINE_JOB_TAGS = ("kfp.run_id", "kfp.pipeline_job")


def finish_run(pipeline_job: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """End the MLflow parent run of Kubeflow run ``pipeline_job`` as the pipeline ended.

    An exit task may not depend on other tasks, so the run is found by its
    ``kfp.run_id`` tag (set by start_run), not passed in. ``status`` is what Kubeflow
    reports for the exit handler's group: state SUCCEEDED, FAILED or CANCELLED, the group's
    name and an error message. The group is not the step that failed: on a cluster the failed
    steps are read from the Kubeflow Pipelines API (``KFP_API_URL`` from the cluster
    ConfigMap); where that is not reachable (``kfp.local``, a network policy) the group's
    name and message are recorded. Returns the MLflow status set ("" when there is no run:
    tracking off, or the pipeline failed before start_run)."""
    import logging
    import os

    from mlflow import MlflowClient

    from sasan.tracking.runs import Tracker

    log = logging.getLogger("sasan.pipeline.finish_run")
    job_tags = ("kfp.run_id", "kfp.pipeline_job")

    def failed_steps() -> list:
        host = os.environ.get("KFP_API_URL", "")
        if not host or not pipeline_job:
            return []
        try:
            import kfp

            details = kfp.Client(host=host).get_run(pipeline_job).run_details
            tasks = (details.task_details if details else None) or []
            return sorted({t.display_name for t in tasks if t.state == "FAILED" and t.display_name
                           and not t.display_name.startswith(("exit-handler", "for-loop", "root", "sasan-steps"))})
        except Exception as err:  # the API is a courtesy: never fail the exit task over it
            log.warning("could not read the failed steps from %s: %s", host, str(err).splitlines()[0] if str(err) else err)
            return []

    def parent_runs(client: MlflowClient) -> list:
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        runs = {}
        for tag in job_tags:
            for i in range(0, len(ids), 100):
                for r in client.search_runs(ids[i:i + 100], filter_string=f"tags.`{tag}` = '{pipeline_job}'",
                                            max_results=100):
                    runs[r.info.run_id] = r
        return [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]

    state = status.state
    mlflow_status = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED"}.get(state, "FAILED")
    tags = {"kfp.final_state": state}
    if state != "SUCCEEDED":
        steps = failed_steps()
        tags["sasan.failed_step"] = ", ".join(steps) if steps else status.pipeline_task_name
        tags["sasan.failure"] = (status.error_message or f"{status.pipeline_task_name} {state.lower()}")[:4000]
        log.error("pipeline %s: %s (failed: %s)", pipeline_job, state, tags["sasan.failed_step"])

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not pipeline_job:
        return ""
    runs = parent_runs(MlflowClient(uri))
    if not runs:
        log.warning("no MLflow parent run tagged %s=%s: nothing to end", job_tags[0], pipeline_job)
        return ""
    for run in runs:   # one, unless start_run was retried after creating its run
        tracker = Tracker.reopen({"run_id": run.info.run_id}, uri)
        tracker.set_tags(tags)
        tracker.end(mlflow_status)
    return mlflow_status
