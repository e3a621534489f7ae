"""What a case landed: rows and Parquet bytes of the Delta tables under a folder.

Delta rows and bytes come from the table's add actions (the statistics every delta-rs commit
records), so no file is opened: a table some readers refuse, like one holding pyarrow's uuid
extension type, still counts."""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable


def delta_landed(root: pathlib.Path, skip_prefix: str = "_dlt") -> tuple[int, int]:
    """Rows and Parquet bytes of the current version of every Delta table below `root`."""
    rows = written = 0
    for log in root.rglob("_delta_log"):
        if log.parent.name.startswith(skip_prefix):
            continue
        actions = pa.table(DeltaTable(str(log.parent)).get_add_actions(flatten=False))
        rows += int(pc.sum(actions["num_records"]).as_py() or 0)
        written += int(pc.sum(actions["size_bytes"]).as_py() or 0)
    return rows, written
