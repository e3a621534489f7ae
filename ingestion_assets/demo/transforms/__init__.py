"""Downstream transforms over the ingested Delta tables (Spark locally or on Databricks)."""
