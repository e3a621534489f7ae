"""IngestionComponent: the project file as a Dagster Component, for `dg` projects.

A `defs.yaml` of `type: ingestion_assets.IngestionComponent` with `attributes: {project:
ingestion.yaml}` builds what `definitions.py` builds from that file; the project file keeps its own
validation, and its errors lead with its own message. `dg scaffold defs
ingestion_assets.IngestionComponent <name>` writes the defs.yaml and a starter project file.
"""

from __future__ import annotations

import pathlib
import textwrap

from dagster import ComponentLoadContext, Definitions
from dagster.components import (
    Component,
    Model,
    Resolvable,
    Scaffolder,
    ScaffoldRequest,
    scaffold_component,
    scaffold_with,
)
from dagster.components.core.component_tree import ComponentTreeException
from pydantic import Field

from ingestion_assets.definitions import ProjectFileError, project_definitions
from ingestion_assets.specs import SNAKE_CASE, snake_case

PROJECT_FILE_NAME = "ingestion.yaml"


def starter_project(source_name: str) -> str:
    """A project file that loads as written (loading connects to nothing): one SQL source whose
    URL is a secret from the environment, and one table, to edit into the real ones."""
    variable = f"{source_name.upper()}_DATABASE_URL"
    return textwrap.dedent(f"""\
        # The project file of this component (defs.yaml beside it names it): the sources, their
        # tables and where they land. Every key is in ingestion_assets' README, "The project file".
        # Relative paths are relative to the directory Dagster runs in (the dg project's root).
        lake:
          root: .data/lake                 # folder, or s3:// / az:// / gs:// URI

        sources:
          # the source's name: the asset key prefix and group of its tables
          {source_name}:
            type: sql
            connection:
              # a SQLAlchemy URL, e.g. postgresql+psycopg2://reader:password@db.internal/erp;
              # export {variable} (or put it in the project's .env) before `dg dev`
              url: ${{{variable}}}
            start_date: 2024-01-01         # the first daily partition
            tables:
              - schema: sales
                name: orders
                partition_column: modified_at    # the day of a row; omit for a snapshot table
                primary_key: [order_id]
        """)


class ComponentProjectFileError(ProjectFileError, ComponentTreeException):
    """A mistake in a component's project file. Dagster's component tree passes its own exception
    class on as it is, where it wraps any other in one that leads with the tree of defs folders
    (the project's message then comes last, as the cause); the file named first says which."""


class IngestionComponentScaffolder(Scaffolder):
    """`dg scaffold defs ingestion_assets.IngestionComponent <name>`: a defs.yaml naming
    `ingestion.yaml`, and a starter ingestion.yaml when the folder has none."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        """Write defs.yaml (or component.py), then the starter project file if it is missing."""
        scaffold_component(request, {"project": PROJECT_FILE_NAME})
        folder = request.target_path.parent if request.append else request.target_path
        project_file = folder / PROJECT_FILE_NAME
        if not project_file.exists():
            name = snake_case(folder.name)
            project_file.write_text(starter_project(name if SNAKE_CASE.match(name) else "erp"))


@scaffold_with(IngestionComponentScaffolder)
class IngestionComponent(Component, Resolvable, Model):
    """Source tables and API streams of a project file (ingestion.yaml) as daily-partitioned Delta
    assets, with their checks, jobs, schedules and sensors."""

    project: str = Field(
        description=(
            "The project file (ingestion.yaml): a path relative to this defs.yaml's folder, or "
            "absolute. It is validated as the standalone definitions validate it."
        )
    )

    def project_path(self, context: ComponentLoadContext) -> pathlib.Path:
        """The project file, relative paths taken from the folder of the component's defs.yaml."""
        path = pathlib.Path(self.project).expanduser()
        return path if path.is_absolute() else context.path / path

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        """The project file's Definitions; a mistake in it is a ConfigError with its message."""
        return project_definitions(self.project_path(context), ComponentProjectFileError)
