"""The project's default executor: one step runs in the run's own process, several in processes
of their own.

Dagster's default (`multi_or_in_process_executor`) starts a new Python process for every step,
which imports Dagster and the project again before it does anything: for a one-day run launched
from the UI that was 4-5 s of a 15 s run whose step worked 0.3 s. An ingestion asset is one step
(its checks are judged in it), so a run of one asset gains nothing from a second process. A
source's job of several tables keeps Dagster's multiprocess executor: its steps run side by side,
as many at once as the source's pool allows. The run config is that of Dagster's default
executor, so what was written for it still applies: `execution: config: multiprocess: {...}`
(the default; its settings, `max_concurrent`, `retries`, ..., apply when there are several steps)
or `in_process: {...}` (every step in the run's process).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dagster import Field, Selector, executor, multiple_process_executor_requirements
from dagster._core.definitions.executor_definition import (
    IN_PROC_CONFIG,
    MULTI_PROC_CONFIG,
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
)
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.base import Executor
from dagster._core.executor.in_process import InProcessExecutor


class StepCountExecutor(Executor):
    """In-process for a plan of one step, Dagster's multiprocess executor for more."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._multiprocess = _core_multiprocess_executor_creation(config)
        self._in_process = InProcessExecutor(
            retries=self._multiprocess.retries,
            marker_to_close=None,
            step_dependency_config=self._multiprocess.step_dependency_config,
        )

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        """Execute the plan in this process when it has one step to execute, else in several."""
        steps = execution_plan.step_keys_to_execute
        chosen = self._in_process if len(steps) <= 1 else self._multiprocess
        yield from chosen.execute(plan_context, execution_plan)

    @property
    def retries(self) -> RetryMode:
        """Dagster's retry setting, as configured."""
        return self._multiprocess.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        """Dagster's step dependency setting, as configured."""
        return self._multiprocess.step_dependency_config


def _requirements(config: Any) -> Any:
    return multiple_process_executor_requirements() if "multiprocess" in config else []


@executor(
    name="one_step_in_process",
    config_schema=Field(
        Selector({"multiprocess": MULTI_PROC_CONFIG, "in_process": IN_PROC_CONFIG}),  # type: ignore[no-untyped-call]
        default_value={"multiprocess": {}},
    ),
    requirements=_requirements,
)
def ingestion_executor(init_context: Any) -> Executor:
    """Runs a one-step plan in the run's process and a plan of several steps in one process
    per step (Dagster's multiprocess executor, configured as that one is); `in_process` config
    runs every step in the run's process."""
    config = init_context.executor_config
    if "multiprocess" in config:
        return StepCountExecutor(config["multiprocess"])
    return _core_in_process_executor_creation(config["in_process"])
