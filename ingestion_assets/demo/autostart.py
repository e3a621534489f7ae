"""The demo API for a plain `dagster dev` / `dg dev` over the demo project, started on demand.

The demo project's REST source names `${DEMO_API_URL}` and `${DEMO_API_PASSWORD}`. `make demo` and
`make ui` run the API and set both; a code location that loads the demo project without them starts
the API itself, once per process, and sets both in its environment, which the runs it launches
inherit. This is the only place loading definitions serves anything, and only for the demo.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import sys
import threading
from collections.abc import MutableMapping

from ingestion_assets.demo.api import DemoApi
from ingestion_assets.errors import ConfigError

URL_VARIABLE = "DEMO_API_URL"
PASSWORD_VARIABLE = "DEMO_API_PASSWORD"  # noqa: S105 - the variable's name
DEMO_API_USER = "demo"
# where `make demo` writes the database; the demo project file names it relative to the working
# directory, as the SQL source reads it
DEMO_DATA_DIR = pathlib.Path(".data") / "demo"

_lock = threading.Lock()


def ensure_demo_api(
    project_file: pathlib.Path,
    environ: MutableMapping[str, str] | None = None,
    data_dir: pathlib.Path = DEMO_DATA_DIR,
) -> str | None:
    """Start the demo API unless DEMO_API_URL is set; its URL when this call started it, else
    None. A missing demo database is a ConfigError naming the command that makes it."""
    environment = os.environ if environ is None else environ
    with _lock:
        if environment.get(URL_VARIABLE):
            return None
        password = secrets.token_urlsafe(16)
        api = DemoApi(data_dir.resolve(), DEMO_API_USER, password)
        try:
            api.start()
        except FileNotFoundError as error:
            raise ConfigError(
                f"{project_file}: the demo database is missing under {data_dir.resolve()} (the "
                f"demo API serves it); run `make demo` in {pathlib.Path.cwd()} first (it creates "
                "the database and ingests it), or set INGEST_PROJECT_FILE to your own project file"
            ) from error
        environment[URL_VARIABLE] = api.url
        environment[PASSWORD_VARIABLE] = password
    # the one line a user sees: where the API is, never its password
    print(
        f"ingestion_assets: started the demo API at {api.url} for the demo project "
        f"({URL_VARIABLE} and {PASSWORD_VARIABLE} set for this process and the runs it launches)",
        file=sys.stderr,
        flush=True,
    )
    return api.url
