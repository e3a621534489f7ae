"""Reading a Delta table as an Arrow dataset (`lake.files.delta_dataset`): a local table's files
through Arrow's own filesystem, the same rows as delta-rs's reader, and a process that exits
in the middle of a scan exits cleanly."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pytest
from deltalake import DeltaTable, write_deltalake

from ingestion_assets.lake.files import delta_dataset

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def _orders(start: int, rows: int, region: str = "north") -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + rows), pa.int64()),
            "note": pa.array([f"order {n}" for n in range(start, start + rows)]),
            "region": pa.array([region] * rows),
        }
    )


@pytest.mark.parametrize("folder", ["orders", "my orders"])
def test_a_local_tables_files_are_read_by_arrow_itself_with_delta_rs_rows(
    tmp_path: pathlib.Path, folder: str
) -> None:
    # delta-rs names the table by a file:// URL: a space in the folder is escaped there
    path = tmp_path / folder
    for part in range(3):
        write_deltalake(str(path), _orders(part * 1000, 1000), mode="append")
    write_deltalake(str(path), _orders(0, 10), mode="overwrite", predicate="id < 10")
    table = DeltaTable(str(path))
    dataset = delta_dataset(table)
    assert not isinstance(dataset.filesystem, pa_fs.PyFileSystem)
    expected = table.to_pyarrow_dataset().to_table().sort_by("id")
    assert dataset.to_table().sort_by("id").equals(expected)
    assert dataset.to_table().num_rows == 3000
    # a filtered read prunes and reads as delta-rs's does
    where = pc.field("id") >= 2990
    assert (
        dataset.to_table(filter=where)
        .sort_by("id")
        .equals(table.to_pyarrow_dataset().to_table(filter=where).sort_by("id"))
    )


def test_a_table_whose_file_paths_carry_escapes_keeps_delta_rs_reader(
    tmp_path: pathlib.Path,
) -> None:
    # delta-rs escapes a partition value in the path ("region=so%20uth"): such paths stay
    # with the reader that understands the log's escaping
    path = tmp_path / "orders"
    write_deltalake(str(path), _orders(0, 5, "so uth"), partition_by=["region"])
    write_deltalake(str(path), _orders(5, 5, "north"), partition_by=["region"], mode="append")
    dataset = delta_dataset(DeltaTable(str(path)))
    assert isinstance(dataset.filesystem, pa_fs.PyFileSystem)
    rows = dataset.to_table().sort_by("id")
    assert rows.column("region").to_pylist() == ["so uth"] * 5 + ["north"] * 5


@pytest.mark.parametrize("run", range(3))
def test_a_process_that_exits_in_the_middle_of_a_scan_exits_cleanly(
    tmp_path: pathlib.Path, run: int
) -> None:
    """With delta-rs's reader (a Python file object per data file), a process that exits while
    a scan reads ahead hangs in Arrow's thread pool shutdown or crashes (every time on 2 cores,
    8 files of 50,000 rows): the file objects' destructors wait for the GIL of a finalizing
    interpreter on Arrow's I/O threads."""
    path = tmp_path / "orders"
    for part in range(8):
        write_deltalake(str(path), _orders(part * 50_000, 50_000), mode="append")
    script = f"""
import sys
sys.path.insert(0, {str(REPOSITORY)!r})
from deltalake import DeltaTable
from ingestion_assets.lake.files import delta_dataset
batches = iter(delta_dataset(DeltaTable({str(path)!r})).to_batches(batch_size=1000))
print(next(batches).num_rows)
"""
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "1000"
