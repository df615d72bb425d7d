"""Charts as inline SVG, drawn on the server: no script and no library needed to read them.

Each function returns SVG text built only from numbers and escaped labels; the templates
mark it safe. Colours come from the stylesheet (classes), so contrast rules live in one
place.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def bars(
    values: Sequence[tuple[str, int]], title: str, width: int = 320, bar_height: int = 22
) -> str:
    """Horizontal bars with their label and value, longest first as given."""
    top = max((value for _, value in values), default=0) or 1
    height = bar_height * max(len(values), 1) + 4
    rows = []
    for index, (label, value) in enumerate(values):
        y = index * bar_height + 2
        length = round((width - 150) * value / top)
        rows.append(
            f'<text x="0" y="{y + 15}" class="chart-label">{escape(label[:18])}</text>'
            f'<rect x="120" y="{y + 3}" width="{max(length, 1)}" height="{bar_height - 8}" '
            f'class="bar bar-{index % 6}"/>'
            f'<text x="{124 + length}" y="{y + 15}" class="chart-value">{value}</text>'
        )
    if not values:
        rows.append('<text x="0" y="16" class="chart-label">No data yet</text>')
    return (
        f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="100%" class="chart"><title>{escape(title)}</title>{"".join(rows)}</svg>'
    )


def stacked_columns(
    columns: Sequence[tuple[str, int, int]], title: str, width: int = 480, height: int = 140
) -> str:
    """Columns of (label, good, bad) stacked bad on top of good; the label of every sixth
    column is written under it."""
    top = max((good + bad for _, good, bad in columns), default=0) or 1
    step = width / max(len(columns), 1)
    plot = height - 20
    parts = []
    for index, (label, good, bad) in enumerate(columns):
        x = index * step + 1
        good_h = plot * good / top
        bad_h = plot * bad / top
        parts.append(
            f'<rect x="{x:.1f}" y="{plot - good_h:.1f}" width="{step - 2:.1f}" '
            f'height="{good_h:.1f}" class="ok"><title>{escape(label)}: {good} succeeded'
            f"</title></rect>"
            f'<rect x="{x:.1f}" y="{plot - good_h - bad_h:.1f}" width="{step - 2:.1f}" '
            f'height="{bad_h:.1f}" class="bad"><title>{escape(label)}: {bad} failed'
            f"</title></rect>"
        )
        if index % 6 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 4}" class="chart-label">{escape(label)}</text>'
            )
    return (
        f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="100%" class="chart"><title>{escape(title)}</title>'
        f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" class="axis"/>{"".join(parts)}</svg>'
    )


def gauge(value: float, title: str, width: int = 200) -> str:
    """A share from 0 to 1 as a filled bar with the percentage."""
    share = min(max(value, 0.0), 1.0)
    return (
        f'<svg role="img" aria-label="{escape(title)}: {share:.1%}" viewBox="0 0 {width} 24" '
        f'width="100%" class="chart"><title>{escape(title)}</title>'
        f'<rect x="0" y="4" width="{width}" height="16" class="track"/>'
        f'<rect x="0" y="4" width="{width * share:.1f}" height="16" class="bad"/></svg>'
    )


def step_depths(steps: Sequence[tuple[str, str, tuple[str, ...], str | None]]) -> dict[str, int]:
    """Each step's column: one more than its deepest dependency (roots are 0)."""
    depends = {step_id: deps for step_id, _, deps, _ in steps}
    depth: dict[str, int] = {}

    def of(step_id: str, seen: frozenset[str]) -> int:
        if step_id not in depth:
            parents = [d for d in depends.get(step_id, ()) if d in depends and d not in seen]
            depth[step_id] = 1 + max((of(p, seen | {step_id}) for p in parents), default=-1)
        return depth[step_id]

    for step_id in depends:
        of(step_id, frozenset())
    return depth


def step_graph(steps: Sequence[tuple[str, str, tuple[str, ...], str | None]], title: str) -> str:
    """A workflow run's steps as boxes in columns by dependency depth, with arrows from
    each dependency; a box links to its step's task and is coloured by its state."""
    depth = step_depths(steps)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for step_id, _, _, _ in steps:
        column = depth[step_id]
        place[step_id] = (column * 190 + 4, rows.get(column, 0) * 64 + 4)
        rows[column] = rows.get(column, 0) + 1
    width = (max(depth.values(), default=0) + 1) * 190
    height = max(rows.values(), default=1) * 64 + 8
    parts = []
    for step_id, _, deps, _ in steps:
        x, y = place[step_id]
        for dep in deps:
            if dep in place:
                px, py = place[dep]
                parts.append(
                    f'<line x1="{px + 150}" y1="{py + 24}" x2="{x}" y2="{y + 24}" class="edge"/>'
                )
    for step_id, state, _, task_id in steps:
        x, y = place[step_id]
        box = (
            f'<rect x="{x}" y="{y}" width="150" height="48" rx="6" '
            f'class="step step-{escape(state.lower())}"/>'
            f'<text x="{x + 8}" y="{y + 20}" class="step-name">{escape(step_id[:18])}</text>'
            f'<text x="{x + 8}" y="{y + 38}" class="step-state">{escape(state)}</text>'
        )
        if task_id:
            box = f'<a href="/ui/tasks/{escape(task_id)}">{box}</a>'
        parts.append(box)
    return (
        f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" class="graph"><title>{escape(title)}</title>{"".join(parts)}</svg>'
    )
