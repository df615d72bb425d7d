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
