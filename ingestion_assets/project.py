"""Load and validate the project file (`ingestion.yaml`) into specs, with errors that point at the key."""

from __future__ import annotations

import difflib
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from dagster import EnvVar
from pydantic import BaseModel, ValidationError

from ingestion_assets.errors import ConfigError, DeprecatedSettingWarning, SourceError
from ingestion_assets.sources.base import source_kinds
from ingestion_assets.specs import (
    ProjectSpec,
    SourceSpecBase,
    duration_text,
    env_reference,
    legacy_freshness_window,
)

PROJECT_FILE_VARIABLE = "INGEST_PROJECT_FILE"
DEMO_PROJECT_FILE = pathlib.Path(__file__).parent / "demo" / "ingestion.yaml"
# far deeper than any project file needs (sources.erp.tables[0].checks.row_count is 6), far
# shallower than the nesting at which the YAML loader's recursion overflows Python's stack
MAX_NESTING = 64
_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def project_file_path(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """The project file named by INGEST_PROJECT_FILE, or the bundled demo file."""
    configured = (os.environ if environ is None else environ).get(PROJECT_FILE_VARIABLE)
    return pathlib.Path(configured) if configured else DEMO_PROJECT_FILE


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (YAML keeps the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


# dates stay text for pydantic to validate, so a bad date is reported with its key path
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def format_path(location: tuple[int | str, ...], raw: Any = None) -> str:
    """('sources', 'erp', 'tables', 2, 'name') -> 'sources.erp.tables[2].name'; with the file's
    data, a table or stream is named too: 'sources.erp.tables[2] (Sales.Orders).name'."""
    text = ""
    node = raw
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = node.get("name") if isinstance(node, Mapping) else None
            if isinstance(name, str):
                schema = node.get("schema") if isinstance(node, Mapping) else None
                text += f" ({schema}.{name})" if isinstance(schema, str) else f" ({name})"
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return text


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The spec models an annotation can hold (through Annotated, unions, dicts, tuples); a
    source is any registered kind's spec."""
    if annotation is SourceSpecBase:
        return [kind.spec_model for kind in source_kinds().values()]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in getattr(annotation, "__args__", ()):
        found.extend(model for model in _models_in(argument) if model not in found)
    return found


def _field_named(model: type[BaseModel], key: str) -> str | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return name
    return None


def _walk(location: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], list[type[BaseModel]]]:
    """The location without union tags, and the models that may hold its last key."""
    path: list[int | str] = []
    candidates: list[type[BaseModel]] = [ProjectSpec]
    dict_key_next = False
    for index, part in enumerate(location):
        if isinstance(part, int):
            path.append(part)
            continue
        if dict_key_next:
            # a key of a dict of specs (a source's name) is a name, even one that spells a tag
            dict_key_next = False
            path.append(part)
            continue
        tagged = [
            model
            for model in candidates
            if getattr(model.model_fields.get("type"), "default", None) == part
        ]
        if len(candidates) > 1 and tagged:
            # pydantic names the member of a discriminated union it tried; people never write it
            candidates = tagged
            continue
        path.append(part)
        if index == len(location) - 1:
            break
        owner = next((m for m in candidates if _field_named(m, part)), None)
        if owner is not None:
            field_name = _field_named(owner, part)
            assert field_name is not None
            annotation = owner.model_fields[field_name].annotation
            candidates = _models_in(annotation) or candidates
            dict_key_next = getattr(annotation, "__origin__", None) is dict
    return tuple(path), candidates


def _describe(error: Mapping[str, Any], data: Any = None) -> str:
    raw = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    location, holders = _walk(raw)
    path = format_path(location, data) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(location[-1])
        allowed = sorted(
            {field.alias or name for model in holders for name, field in model.model_fields.items()}
        )
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{path}: unknown key '{key}'; {hint}allowed keys: {', '.join(allowed)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{path}: required key is missing; add it"
    if error["type"] == "union_tag_invalid":
        return f"{path}: {message}"
    if error["type"] == "union_tag_not_found":
        key = str(location[-1])
        fields = [(m, _field_named(m, key)) for m in holders]
        kinds = {
            str(getattr(kind.model_fields.get("type"), "default", ""))
            for model, name in fields
            if name is not None
            for kind in _models_in(model.model_fields[name].annotation)
        } - {""}
        return f"{path}: `type` is missing; say which kind it is: {', '.join(sorted(kinds))}"
    if error["type"].startswith("date"):
        return f"{path}: {message}; write dates as YYYY-MM-DD, e.g. 2024-01-31"
    return f"{path}: {message}"


def _environment_references(
    value: Any, location: tuple[int | str, ...] = ()
) -> Iterator[tuple[tuple[int | str, ...], str]]:
    if isinstance(value, str):
        name = env_reference(value)
        if name:
            yield location, name
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _environment_references(item, (*location, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _environment_references(item, (*location, index))


def decode_project_file(data: bytes, origin: str) -> str:
    """The project file's bytes as text: UTF-8 (a byte-order mark allowed), anything else refused
    with the line of the first byte that is not UTF-8 and the fix."""
    if data.startswith(_UTF16_MARKS):
        raise ConfigError(
            f"{origin}: the project file is UTF-16 text; save it as UTF-8 (in most editors: "
            "Save with encoding > UTF-8) and load it again"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(
            f"{origin}: line {line}, column {column}: byte 0x{data[error.start]:02x} is not UTF-8 "
            "(the file looks saved as Latin-1 or Windows-1252); save the project file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8) and load it again"
        ) from None


def _check_nesting(text: str, origin: str) -> None:
    """Refuse YAML nested deeper than MAX_NESTING, naming the line and the keys above it, before
    the loader (which recurses once per level) overflows the stack."""
    # one frame per open mapping or sequence: [is a mapping, a key comes next, last key or index]
    frames: list[list[Any]] = []
    try:
        for event in yaml.parse(text, Loader=_UniqueKeyLoader):
            if isinstance(event, yaml.CollectionEndEvent):
                frames.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            if frames and frames[-1][0]:
                # in a mapping, nodes alternate: key, value, key, ...
                if frames[-1][1]:
                    frames[-1][2] = str(getattr(event, "value", "?"))
                frames[-1][1] = not frames[-1][1]
            elif frames:
                frames[-1][2] += 1
            if isinstance(event, yaml.CollectionStartEvent):
                if len(frames) >= MAX_NESTING:
                    location = format_path(tuple(frame[2] for frame in frames[:8]))
                    line = event.start_mark.line + 1 if event.start_mark else "?"
                    raise ConfigError(
                        f"{origin}: line {line}: the YAML is nested more "
                        f"than {MAX_NESTING} levels deep (under {location}...); a project file "
                        "needs fewer than 10: look for an unclosed [ or { or runaway indentation"
                    )
                frames.append([isinstance(event, yaml.MappingStartEvent), True, -1])
    except yaml.YAMLError:
        # malformed text: the loader below reports it with its position
        return


def parse_project(
    text: str,
    origin: str,
    environ: Mapping[str, str] | None = None,
    require_secrets: bool = True,
) -> ProjectSpec:
    """Validate project-file text; `origin` names the file in error messages. Without
    `require_secrets`, a `${VAR}` that is not set is left for the caller to report."""
    _check_nesting(text, origin)
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_error(origin, error)) from None
    except RecursionError:
        # anchors and aliases can nest without nesting the text
        raise ConfigError(
            f"{origin}: the YAML is nested too deep to load; a project file needs fewer than 10 "
            "levels: check for unclosed [ or { and for aliases (*name) that refer to themselves"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping with `sources:` at the top level")
    try:
        project = ProjectSpec.model_validate(raw)
    except ValidationError as error:
        problems = "\n  - ".join(_describe(item, raw) for item in error.errors())
        raise ConfigError(f"{origin}: invalid project file:\n  - {problems}") from None
    environment = os.environ if environ is None else environ
    missing = [
        f"{format_path(location)}: environment variable {name} is not set; "
        f"export {name}=... before starting Dagster"
        for location, name in _environment_references(raw)
        if name not in environment
    ]
    if missing and require_secrets:
        raise ConfigError(f"{origin}: missing secrets:\n  - " + "\n  - ".join(missing))
    _check_connection_urls(raw, environment, origin)
    _warn_deprecated(project, raw, origin)
    return project


def _warn_deprecated(project: ProjectSpec, raw: Any, origin: str) -> None:
    """Say, once per load, which deprecated settings the file uses and what replaces them."""
    for name, source in project.sources.items():
        # the field holding the datasets (`tables`, `streams`) names their entries
        field = next(
            (key for key in type(source).model_fields if getattr(source, key) is source.datasets),
            "datasets",
        )
        for index, dataset in enumerate(source.datasets):
            legacy = dataset.checks.freshness
            if not legacy.enabled:
                continue
            path = format_path(("sources", name, field, index, "checks", "freshness"), raw)
            window = duration_text(legacy_freshness_window(legacy))
            warnings.warn(
                f"{origin}: {path} is deprecated: it now sets the asset's Dagster freshness policy "
                "(evaluated by the daemon, shown on the asset) instead of a `freshness` asset "
                "check, and its severity and blocking no longer apply; write `freshness: {type: "
                f"time_window, fail_after: {window}}}` on the entry instead",
                DeprecatedSettingWarning,
                stacklevel=3,
            )


def _check_connection_urls(raw: Any, environment: Mapping[str, str], origin: str) -> None:
    """A whole connection URL from the environment (`url: ${DB_URL}`) must parse as one: a raw
    `@` in its password would otherwise be taken for the host. Refused here, before Dagster
    starts, with the key path and the fix, and without quoting any of the value."""
    from ingestion_assets.sources.sql import source_url

    for location, name in _environment_references(raw):
        if location[-2:] != ("connection", "url") or location[0] != "sources":
            continue
        if name not in environment:  # reported as a missing secret, or by the caller
            continue
        try:
            source_url(environment[name], str(location[1]))
        except SourceError as error:
            raise ConfigError(f"{origin}: {format_path(location)} (${{{name}}}): {error}") from None


def _yaml_error(origin: str, error: yaml.YAMLError) -> str:
    """`file: line L, column C: not valid YAML: <problem> (<context>)`: the file's own name and
    position, not PyYAML's `<unicode string>`."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return f"{origin}: not valid YAML: {error}"
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{origin}: {where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def load_project(path: pathlib.Path | None = None, require_secrets: bool = True) -> ProjectSpec:
    """Read and validate the project file (INGEST_PROJECT_FILE, or the demo file); without
    `require_secrets`, a `${VAR}` that is not set is no error (`ingest check` reports it)."""
    path = path or project_file_path()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read the project file ({error.strerror}); set "
            f"{PROJECT_FILE_VARIABLE} to the path of your ingestion.yaml"
        ) from None
    text = decode_project_file(data, str(path))
    project = parse_project(text, str(path), require_secrets=require_secrets)
    project._path = str(path.resolve())
    project._entry_lines = _entry_lines(text)
    return project


def _entry_lines(text: str) -> dict[tuple[str, int], int]:
    """The 1-based line of each `sources.<name>.<tables|streams>[i]` entry (for the UI's code
    references); empty when the file's shape is not that."""
    lines: dict[tuple[str, int], int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sources = _mapping_value(root, "sources")
    if not isinstance(sources, yaml.MappingNode):
        return lines
    for key, source in sources.value:
        for datasets in ("tables", "streams", "files"):
            entries = _mapping_value(source, datasets)
            if isinstance(entries, yaml.SequenceNode):
                for index, entry in enumerate(entries.value):
                    lines[(str(key.value), index)] = entry.start_mark.line + 1
    layers = _mapping_value(root, "layers")
    if isinstance(layers, yaml.SequenceNode):
        # a source name is never empty: "" keys the layers
        for index, entry in enumerate(layers.value):
            lines[("", index)] = entry.start_mark.line + 1
    return lines


def _mapping_value(node: Any, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for name, value in node.value if name.value == key), None)


def config_value(value: str) -> str | EnvVar:
    """A spec string as resource config: `${NAME}` becomes `EnvVar('NAME')`, resolved at run time."""
    name = env_reference(value)
    return EnvVar(name) if name else value
