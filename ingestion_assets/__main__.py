"""`python -m ingestion_assets check`: the `ingest` command (see preflight.py)."""

from __future__ import annotations

import sys

from ingestion_assets.preflight import main

sys.exit(main())
