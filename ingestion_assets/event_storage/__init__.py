"""Dagster event log storages for the instances the project ships: Dagster's own SQLite and
PostgreSQL storages, with the per-event connection and commit costs taken out (`sqlite.py`,
`postgres.py`), writing Dagster's rows with prebuilt statements (`rows.py`)."""
