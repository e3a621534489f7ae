"""The default executor: a one-step run works in the run's own process, a run of several steps in
a process per step, as Dagster's multiprocess executor runs them."""

import os

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    DagsterInstance,
    Definitions,
    JobDefinition,
    asset,
    define_asset_job,
    execute_job,
    reconstructable,
)

from ingestion_assets.executor import ingestion_executor


@asset
def first(context: AssetExecutionContext) -> int:
    context.add_output_metadata({"pid": os.getpid()})
    return 1


@asset
def second(context: AssetExecutionContext) -> int:
    context.add_output_metadata({"pid": os.getpid()})
    return 2


def _defs() -> Definitions:
    return Definitions(
        assets=[first, second],
        jobs=[
            define_asset_job("one_asset", selection=AssetSelection.assets(first)),
            define_asset_job("two_assets", selection=AssetSelection.assets(first, second)),
        ],
        executor=ingestion_executor,
    )


def one_asset_job() -> JobDefinition:
    return _defs().resolve_job_def("one_asset")


def two_assets_job() -> JobDefinition:
    return _defs().resolve_job_def("two_assets")


def _step_pids(instance: DagsterInstance, run_id: str) -> set[int]:
    return {
        int(record.asset_materialization.metadata["pid"].value)
        for record in instance.all_logs(run_id)
        if record.asset_materialization is not None
    }


def test_a_run_of_one_asset_works_in_the_runs_process_and_of_two_in_a_process_each(
    tmp_path: object,
) -> None:
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        with execute_job(reconstructable(one_asset_job), instance) as one:
            assert one.success
            assert _step_pids(instance, one.run_id) == {os.getpid()}
        # Dagster's multiprocess settings apply to it
        settings = {"max_concurrent": 1, "retries": {"disabled": {}}}
        config = {"execution": {"config": {"multiprocess": settings}}}
        with execute_job(reconstructable(two_assets_job), instance, run_config=config) as two:
            assert two.success
            pids = _step_pids(instance, two.run_id)
            assert len(pids) == 2
            assert os.getpid() not in pids
        # and its in_process setting keeps every step in the run's process
        config = {"execution": {"config": {"in_process": {}}}}
        with execute_job(reconstructable(two_assets_job), instance, run_config=config) as inline:
            assert inline.success
            assert _step_pids(instance, inline.run_id) == {os.getpid()}
