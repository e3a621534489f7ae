"""ingestion_assets: source tables and API streams as daily-partitioned Delta Lake assets.

Importing a submodule (`ingestion_assets.sources`, `ingestion_assets.lake`) stays cheap: the one
name here, `IngestionComponent` (the project file as a Dagster Component, for `dg`), is imported
with Dagster only when it is asked for; Dagster itself loads `ingestion_assets.definitions`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingestion_assets.component import IngestionComponent

__all__ = ["IngestionComponent"]


def __getattr__(name: str) -> Any:
    """Import `IngestionComponent` on first use (PEP 562), not with the package."""
    if name == "IngestionComponent":
        from ingestion_assets.component import IngestionComponent

        return IngestionComponent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The package's names and `IngestionComponent`: `dg` finds components through dir()."""
    return sorted({*globals(), *__all__})
