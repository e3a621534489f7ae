"""ingestion_assets: source tables and API streams as daily-partitioned Delta Lake assets.

Empty on purpose, so importing a submodule (`ingestion_assets.sources`, `ingestion_assets.lake`)
stays cheap; Dagster loads `ingestion_assets.definitions`."""
