"""The Delta table layout: rows, data files, replace and maintenance; nothing here imports Dagster."""
