"""The files of a landing zone: the filesystem of its root (a local folder or an object store,
through pyarrow.fs: no further dependency), the files a glob matches with their size and
modification time, and the day each one arrived.

The listing is one recursive walk below the glob's fixed prefix (`orders/2024/*.csv` walks only
`orders/2024/`), bounded by MAX_LISTED entries so a mistaken root fails fast instead of walking
a whole bucket.
"""

from __future__ import annotations

import datetime
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.fs as pafs

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.files.spec import ArrivalPartitioning

MAX_LISTED = 1_000_000


@dataclass(frozen=True)
class FileEntry:
    """One file of the landing zone: its path below the root, size and modification time."""

    path: str
    size: int
    modified: datetime.datetime

    @property
    def stamp(self) -> str:
        """The modification time as the sensor's cursor keeps it (UTC, ISO 8601)."""
        return self.modified.astimezone(datetime.UTC).isoformat()


@dataclass(frozen=True)
class LandingZone:
    """A root opened on its filesystem."""

    filesystem: pafs.FileSystem
    base: str
    root: str

    def full_path(self, entry: FileEntry) -> str:
        """The file's path on the filesystem."""
        return f"{self.base}/{entry.path}" if self.base else entry.path

    def open(self, entry: FileEntry) -> pa.NativeFile:
        """The file, opened for reading as a stream."""
        return self.filesystem.open_input_stream(self.full_path(entry), compression=None)


def _option(options: Mapping[str, str], *names: str) -> str | None:
    lowered = {key.lower(): value for key, value in options.items()}
    return next((lowered[name.lower()] for name in names if name.lower() in lowered), None)


def open_zone(root: str, storage_options: Mapping[str, str]) -> LandingZone:
    """The filesystem and base path of a root: a folder, `s3://`, `gs://`, `az://`."""
    if "://" not in root or root.startswith("file://"):
        path = root.removeprefix("file://").rstrip("/") or "/"
        local = pafs.LocalFileSystem()
        return LandingZone(local, str(pathlib.Path(path).resolve()), root)
    scheme, _, rest = root.partition("://")
    base = rest.strip("/")
    if scheme == "s3":
        endpoint = _option(storage_options, "AWS_ENDPOINT_URL", "endpoint_url", "AWS_ENDPOINT")
        scheme_of_endpoint = None
        if endpoint is not None:
            scheme_of_endpoint, _, endpoint = endpoint.rpartition("://")
        allow_http = (_option(storage_options, "AWS_ALLOW_HTTP", "allow_http") or "").lower()
        filesystem: pafs.FileSystem = pafs.S3FileSystem(
            access_key=_option(storage_options, "AWS_ACCESS_KEY_ID", "aws_access_key_id"),
            secret_key=_option(storage_options, "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            session_token=_option(storage_options, "AWS_SESSION_TOKEN", "aws_session_token"),
            region=_option(storage_options, "AWS_REGION", "AWS_DEFAULT_REGION", "region")
            or "us-east-1",
            endpoint_override=endpoint,
            scheme=scheme_of_endpoint or ("http" if allow_http == "true" else "https"),
        )
        return LandingZone(filesystem, base, root)
    if scheme in ("gs", "gcs"):
        return LandingZone(pafs.GcsFileSystem(), base, root)
    if scheme in ("az", "abfs", "abfss"):
        account = _option(storage_options, "AZURE_STORAGE_ACCOUNT_NAME", "account_name")
        if account is None:
            raise SourceError(
                f"landing zone {root}: set AZURE_STORAGE_ACCOUNT_NAME (and the key as ${{VAR}}) "
                "in storage_options"
            )
        filesystem = pafs.AzureFileSystem(
            account_name=account,
            account_key=_option(storage_options, "AZURE_STORAGE_ACCOUNT_KEY", "account_key"),
        )
        return LandingZone(filesystem, base, root)
    raise SourceError(
        f"landing zone {root}: unknown scheme {scheme}://; use a folder, s3://, gs:// or az://"
    )


@lru_cache(maxsize=256)
def glob_pattern(glob: str) -> re.Pattern[str]:
    """A glob as a regular expression over paths: `*` and `?` within a folder, `**/` any
    folders (none included), `[...]` a set."""
    out, index = [], 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:[^/]+/)*")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif glob[index] == "*":
            out.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            out.append("[^/]")
            index += 1
        elif glob[index] == "[":
            end = glob.find("]", index + 1)
            if end < 0:
                out.append(re.escape(glob[index]))
                index += 1
                continue
            members = glob[index + 1 : end]
            if members.startswith("!"):
                members = "^" + members[1:]
            out.append(f"[{members}]")
            index = end + 1
        else:
            out.append(re.escape(glob[index]))
            index += 1
    return re.compile("".join(out) + r"\Z")


def fixed_prefix(glob: str) -> str:
    """The folders a glob names before its first wildcard (`orders/2024/*.csv` -> `orders/2024`)."""
    parts = glob.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(character in part for character in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed)


def list_files(zone: LandingZone, glob: str, where: str) -> list[FileEntry]:
    """The files below the root that the glob matches, by path."""
    pattern = glob_pattern(glob.lstrip("/"))
    prefix = fixed_prefix(glob.lstrip("/"))
    start = "/".join(part for part in (zone.base, prefix) if part)
    selector = pafs.FileSelector(start, recursive=True, allow_not_found=True)
    try:
        infos = zone.filesystem.get_file_info(selector)
    except OSError as error:
        raise SourceError(
            f"{where}: cannot list {zone.root}/{prefix}: {error}. Check the root, the "
            "credentials in storage_options and the network."
        ) from error
    if len(infos) > MAX_LISTED:
        raise SourceError(
            f"{where}: more than {MAX_LISTED:,} entries below {zone.root}/{prefix}; narrow the "
            "glob's folders (its fixed prefix is what is walked)"
        )
    skip = len(zone.base) + 1 if zone.base else 0
    entries = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[skip:]
        if pattern.match(relative) is None:
            continue
        modified = info.mtime
        if modified is None:
            modified = datetime.datetime.fromtimestamp(0, datetime.UTC)
        elif modified.tzinfo is None:
            modified = modified.replace(tzinfo=datetime.UTC)
        entries.append(FileEntry(relative, int(info.size or 0), modified))
    return sorted(entries, key=lambda entry: entry.path)


def arrival_day(
    entry: FileEntry, partitioning: ArrivalPartitioning, zone: str
) -> datetime.date | None:
    """The day a file arrived: its modification time's day in `zone`, or the date in its path
    (None when the path has none)."""
    if partitioning.day_from == "modified_time":
        return entry.modified.astimezone(ZoneInfo(zone)).date()
    match = re.search(partitioning.path_pattern, entry.path)
    if match is None:
        return None
    try:
        return datetime.date.fromisoformat(match.group(1))
    except ValueError:
        return None
