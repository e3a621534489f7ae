"""The results table: each case's median figures and their ratios to the pipeline limit and to
the best peer of its group, as aligned text for the terminal and as Markdown for the README."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cases import Case, Group
from measure import Figures, Sample

# the limit cases whose slower one is the pipeline limit of a group
PIPELINE_LIMITS: dict[Group, tuple[str, ...]] = {
    "sql": ("limit-read", "limit-write"),
    "day": ("limit-read-day", "limit-write-day"),
    "rest": ("limit-api",),
}
HEADER = (
    "case",
    "rows",
    "rows/s",
    "MB/s",
    "peak RSS MB",
    "wall s",
    "process s",
    "written MB",
    "L rows/s",
    "L MB/s",
    "L RSS",
    "L wall",
    "P rows/s",
    "P MB/s",
    "P RSS",
    "P wall",
)


@dataclass(frozen=True)
class Outcome:
    """A case's median figures, or why it has none."""

    case: Case
    figures: Figures | None = None
    reason: str = ""
    samples: tuple[Sample, ...] = ()


@dataclass(frozen=True)
class Reference:
    """What a group's ratios divide by: its pipeline limit and its best (fastest) peer."""

    limit: Figures | None
    limit_name: str
    peer: Figures | None
    peer_name: str


def references(outcomes: Sequence[Outcome], group: Group) -> Reference:
    """The pipeline limit (the slower of the group's limits) and the peer with most rows/s."""
    measured = {o.case.name: o.figures for o in outcomes if o.figures and o.case.group == group}
    limits = [(name, measured.get(name)) for name in PIPELINE_LIMITS[group]]
    limit, limit_name = None, "needs " + " and ".join(PIPELINE_LIMITS[group])
    if all(figures is not None for _, figures in limits):
        limit_name, limit = min(
            ((name, figures) for name, figures in limits if figures is not None),
            key=lambda item: item[1].rows_per_second,
        )
    peers = [
        (o.case.name, o.figures)
        for o in outcomes
        if o.figures and o.case.group == group and o.case.kind == "peer"
    ]
    peer, peer_name = None, "no peer measured"
    if peers:
        peer_name, peer = max(peers, key=lambda item: item[1].rows_per_second)
    return Reference(limit, limit_name, peer, peer_name)


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or reference == 0:
        return "-"
    return f"{value / reference:.2f}"


def _ratios(figures: Figures, reference: Figures | None) -> list[str]:
    if reference is None:
        return ["-"] * 4
    return [
        _ratio(figures.rows_per_second, reference.rows_per_second),
        _ratio(figures.megabytes_per_second, reference.megabytes_per_second),
        _ratio(figures.peak_rss_mb, reference.peak_rss_mb),
        _ratio(figures.seconds, reference.seconds),
    ]


def _cells(label: str, figures: Figures, reference: Reference) -> list[str]:
    return [
        label,
        f"{figures.rows:,}",
        f"{figures.rows_per_second:,.0f}",
        f"{figures.megabytes_per_second:,.1f}",
        f"{figures.peak_rss_mb:,.0f}",
        f"{figures.seconds:,.2f}",
        f"{figures.process_seconds:,.2f}",
        f"{figures.written_mb:,.1f}" if figures.written_mb else "-",
        *_ratios(figures, reference.limit),
        *_ratios(figures, reference.peer),
    ]


@dataclass(frozen=True)
class Row:
    """A group's title, a case's figures, or a case without figures (its label only)."""

    kind: Literal["title", "figures", "missing"]
    cells: list[str]


@dataclass(frozen=True)
class Table:
    """The rows in order and the numbered notes they point to."""

    rows: list[Row]
    notes: list[str]


def build_table(outcomes: Sequence[Outcome], titles: Mapping[Group, str]) -> Table:
    """Every selected case in group order, the pipeline limit after each group's limits."""
    rows: list[Row] = []
    notes: list[str] = []

    def noted(label: str, text: str) -> str:
        notes.append(text)
        return f"{label} [{len(notes)}]"

    for group, title in titles.items():
        members = [o for o in outcomes if o.case.group == group]
        if not members:
            continue
        reference = references(outcomes, group)
        limit_title = (
            f"pipeline limit = {reference.limit_name}"
            if reference.limit
            else f"pipeline limit: n/a ({reference.limit_name})"
        )
        rows.append(Row("title", [f"{title}; {limit_title}; best peer = {reference.peer_name}"]))
        for index, outcome in enumerate(members):
            label = outcome.case.label
            if outcome.figures is None:
                reason = outcome.reason.removeprefix(f"{outcome.case.name}: ")
                rows.append(Row("missing", [noted(label, f"{outcome.case.name}: n/a: {reason}")]))
            else:
                if outcome.figures.note:
                    label = noted(label, f"{outcome.case.name}: {outcome.figures.note}")
                rows.append(Row("figures", _cells(label, outcome.figures, reference)))
            following = members[index + 1] if index + 1 < len(members) else None
            if (
                outcome.case.kind == "limit"
                and (following is None or following.case.kind != "limit")
                and reference.limit is not None
            ):
                limit_row = _cells("pipeline limit (the slower)", reference.limit, reference)
                rows.append(Row("figures", limit_row))
    return Table(rows, notes)


def render_text(table: Table) -> str:
    """Aligned columns for the terminal; titles and n/a rows run across."""
    widths = [len(title) for title in HEADER]
    for row in table.rows:
        if row.kind == "figures":
            widths = [max(width, len(cell)) for width, cell in zip(widths, row.cells, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        )

    out = [line(HEADER), "  ".join("-" * width for width in widths)]
    for row in table.rows:
        if row.kind == "figures":
            out.append(line(row.cells))
        elif row.kind == "title":
            out.extend(["", row.cells[0]])
        else:
            out.append(row.cells[0].ljust(widths[0]) + "  n/a")
    out.append("")
    out.extend(f"[{number}] {note}" for number, note in enumerate(table.notes, start=1))
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    """A Markdown table; a title row becomes a bold row, an n/a row says n/a in each figure."""
    out = [
        "| " + " | ".join(HEADER) + " |",
        "| --- |" + " ---: |" * (len(HEADER) - 1),
    ]

    def cell(text: str) -> str:
        # a pipe would end the cell; an indented label (a variant of the row above) keeps a mark
        text = text.replace("|", "\\|")
        return "↳ " + text.strip() if text.startswith("  ") else text

    for row in table.rows:
        if row.kind == "figures":
            out.append("| " + " | ".join(cell(text) for text in row.cells) + " |")
        elif row.kind == "title":
            out.append(f"| **{cell(row.cells[0])}** |" + " |" * (len(HEADER) - 1))
        else:
            out.append(f"| {cell(row.cells[0])} |" + " n/a |" * (len(HEADER) - 1))
    out.append("")
    out.extend(f"[{number}] {note}  " for number, note in enumerate(table.notes, start=1))
    return "\n".join(out)
