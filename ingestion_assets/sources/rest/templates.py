"""Values picked out of JSON bodies by dot path, and the window put into query parameters.

Plain functions of their input, no HTTP: a stream's `records_path`, a paginator's `total_path` and
the `{start}`/`{end}` placeholders of its `params` are all resolved here, so the same path syntax
and the same instant formatting hold everywhere a project file names one.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from typing import Any

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.window import PartitionWindow


def json_path(body: Any, path: str) -> Any:
    """The value at a dot path (`data.items`, `meta.0.total`); None when any step is missing."""
    value = body
    for part in filter(None, path.split(".")):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class _Instant(datetime.datetime):
    """A window bound in a template: ISO 8601 by default, strftime with a format spec."""

    def __format__(self, spec: str) -> str:
        return self.strftime(spec) if spec else self.isoformat()

    def __str__(self) -> str:
        return self.isoformat()


def _instant(value: datetime.datetime) -> _Instant:
    return _Instant(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo,
    )


def window_params(
    params: Mapping[str, str], window: PartitionWindow | None, label: str
) -> dict[str, str]:
    """Query parameters with `{start}`, `{end}`, `{end_inclusive}` filled from the window."""
    values: dict[str, Any] = {}
    if window is not None:
        values = {
            "start": _instant(window.start),
            "end": _instant(window.end),
            "end_inclusive": _instant(window.end - datetime.timedelta(microseconds=1)),
        }
    resolved: dict[str, str] = {}
    for name, template in params.items():
        try:
            resolved[name] = template.format(**values)
        except (KeyError, IndexError, ValueError) as error:
            available = ", ".join("{" + key + "}" for key in values) or "none (unpartitioned)"
            raise SourceError(
                f"{label}: query parameter {name}='{template}' cannot be filled ({error}); "
                f"placeholders available: {available}"
            ) from None
    return resolved


def since_params(params: Mapping[str, str], since: str, label: str) -> dict[str, str]:
    """Query parameters with `{since}` filled with a cursor: a date or time (ISO 8601) as an
    instant that takes a strftime format, anything else (an id) as its text."""
    value: Any = since
    with contextlib.suppress(ValueError):
        value = _instant(datetime.datetime.fromisoformat(since))
    resolved: dict[str, str] = {}
    for name, template in params.items():
        try:
            resolved[name] = template.format(since=value)
        except (KeyError, IndexError, ValueError) as error:
            raise SourceError(
                f"{label}: query parameter {name}='{template}' cannot be filled with the cursor "
                f"{since!r} ({error}); the placeholder available is {{since}}"
            ) from None
    return resolved
