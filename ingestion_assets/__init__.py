"""ingestion_assets: source tables and API streams as daily-partitioned Delta Lake assets."""

from ingestion_assets.definitions import defs

__all__ = ["defs"]
