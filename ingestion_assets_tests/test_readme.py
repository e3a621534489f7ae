"""Every YAML example in the README parses, and validates as the part of a project file it shows
(a user copies them: an example that does not load is a bug)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml
from dagster._core.test_utils import instance_for_test

from ingestion_assets.component import IngestionComponent
from ingestion_assets.project import parse_project
from ingestion_assets.specs import LakeSpec, StreamSpec, TableSpec

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


def _flow_mappings(text: str) -> list[str]:
    """The outermost `{...}` of a text, braces balanced (a `${VAR}` inside counts as braces)."""
    found, depth, start = [], 0, 0
    for index, character in enumerate(text):
        if character == "{":
            if depth == 0:
                start = index
            depth += 1
        elif character == "}" and depth:
            depth -= 1
            if depth == 0:
                found.append(text[start : index + 1])
    return found


# the inline {...} examples in the blocks' comments
INLINE = [
    example
    for block in BLOCKS
    for comment in re.findall(r"#(.*)$", block, re.M)
    for example in _flow_mappings(comment)
    if ": " in example
]
# the sections of a Dagster instance file a README block may show
INSTANCE_SECTIONS = {"run_launcher", "run_coordinator", "event_log_storage"}
SOURCE = {"type": "sql", "connection": {"url": "sqlite://"}, "start_date": "2024-01-01"}
TABLE = {"schema": "Sales", "name": "Orders", "partition_column": "ModifiedDate"}


def _environment(text: str) -> dict[str, str]:
    """A value for every ${VAR} the text names (a URL for the ones holding URLs)."""
    names = set(re.findall(r"\$\{(\w+)\}", text))
    return {
        name: "https://127.0.0.1:9" if "URL" in name or "HOST" in name else "x" for name in names
    }


def _validate(data: Any, text: str) -> None:
    environment = _environment(text)
    if isinstance(data, list):
        # entries of a SQL source's `tables:`, or of a REST source's `streams:` (with a `path`)
        for entry in data:
            (StreamSpec if "path" in entry else TableSpec).model_validate(entry)
        return
    assert isinstance(data, dict), data
    if data.get("type") == "ingestion_assets.IngestionComponent":
        # a component's defs.yaml: its attributes as dg validates them
        model = IngestionComponent.get_model_cls()
        assert model is not None
        model.model_validate(data["attributes"])
        return
    if "sources" in data:
        sources = data["sources"]
        # a block may show some sources' keys only: give them the rest
        for name, source in sources.items():
            if "type" not in source:
                sources[name] = {**SOURCE, "tables": [TABLE], **source}
        project = {**data}
        parse_project(yaml.safe_dump(project), "README.md", environment)
        return
    if set(data) <= INSTANCE_SECTIONS:
        # a block of a Dagster instance's dagster.yaml: the classes load with their config
        with instance_for_test(overrides=data) as instance:
            assert instance.run_launcher is not None
        return
    if set(data) == {"lake"}:
        LakeSpec.model_validate(data["lake"])
        return
    if set(data) == {"transforms"}:
        parse_project(
            yaml.safe_dump({**data, "sources": {"erp": {**SOURCE, "tables": [TABLE]}}}),
            "README.md",
            environment,
        )
        return
    # a source's own keys, shown without `sources:`
    for name, source in data.items():
        if name in ("services", "secrets", "volumes"):  # Docker Compose, not a project file
            return
        merged = {**SOURCE, "tables": [TABLE], **source}
        parse_project(yaml.safe_dump({"sources": {name: merged}}), "README.md", environment)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_yaml_block_of_the_readme_parses_and_validates(index: int) -> None:
    text = BLOCKS[index]
    _validate(yaml.safe_load(text), text)


@pytest.mark.parametrize("example", INLINE)
def test_every_inline_example_in_a_comment_parses(example: str) -> None:
    assert isinstance(yaml.safe_load(example), dict), example


def test_the_readme_has_examples_to_check() -> None:
    assert len(BLOCKS) >= 8
    assert any("type: basic" in example for example in INLINE)
