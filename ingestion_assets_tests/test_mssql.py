"""SQL Server end to end, when INGEST_TEST_MSSQL_URL names one: the demo data in new schemas there,
ingested into Delta and compared with the source like on every other dialect.

There is no SQL Server on the development and CI machines (../shared/SERVICES.md): without the
variable the test skips, saying so; with it, a server that does not answer fails the test.
"""

from __future__ import annotations

import pathlib

import pytest
from dagster import DagsterInstance

from ingestion_assets_tests import test_sql_source
from ingestion_assets_tests.conftest import SourceDatabase

pytestmark = pytest.mark.mssql


def test_one_day_of_each_order_table_equals_the_source_on_sql_server(
    mssql_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # the very comparison PostgreSQL, MariaDB and SQLite run, so SQL Server is held to the same
    test_sql_source.test_one_day_of_each_order_table_equals_the_source(
        mssql_database, tmp_path, instance
    )
