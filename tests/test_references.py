"""Every reference in the code can be followed from a clone: cited docs exist, cited
anchors are headings of that doc, and no comment points at a document the repository
does not contain."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    *sorted((ROOT / "tasks_server").rglob("*.py")),
    *sorted((ROOT / "tasks_server").rglob("*.sql")),
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.md",
]
DOC_REF = re.compile(r"docs/([a-z_-]+\.md)((?:#[a-z0-9-]+)?)")
# a bare "#anchor" continuing a reference, e.g. "docs/compatibility.md#outcomes and #retry"
MORE_ANCHORS = re.compile(r"\band #([a-z0-9-]+)")
# a file of the repository named by its path, e.g. bench/bench_engine.py
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:bench|tests|tasks_server|docs|scripts)/[\w/.-]*\w\.(?:py|md|sql))\b"
)
UNRESOLVABLE = re.compile(
    r"\bspec (section )?\d+(\.\d+)?|\(W\d+\)|\bW\d+\b[:)]|STYLE R\d+|DESIGN(\.md)? section"
)


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found = set()
    for line in doc.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return found


def test_cited_docs_and_anchors_exist() -> None:
    checked = 0
    for source in SOURCES:
        if source.name == "test_references.py":
            continue
        text = source.read_text()
        for match in DOC_REF.finditer(text):
            doc = ROOT / "docs" / match.group(1)
            assert doc.is_file(), f"{source.relative_to(ROOT)} cites missing {doc.name}"
            wanted = [match.group(2)[1:]] if match.group(2) else []
            tail = text[match.end() : match.end() + 40].split("\n")[0]
            wanted += MORE_ANCHORS.findall(tail)
            for anchor in wanted:
                assert anchor in anchors(doc), (
                    f"{source.relative_to(ROOT)} cites {doc.name}#{anchor}, not a heading"
                )
                checked += 1
    assert checked > 20  # the code cites docs/compatibility.md throughout


def test_no_reference_to_documents_outside_the_repository() -> None:
    offenders = [
        f"{source.relative_to(ROOT)}: {match.group(0)}"
        for source in SOURCES
        if source.name != "test_references.py"
        for match in UNRESOLVABLE.finditer(source.read_text())
    ]
    assert offenders == []


def test_cited_repository_files_exist() -> None:
    missing = [
        f"{source.relative_to(ROOT)}: {match.group(1)}"
        for source in SOURCES
        for match in REPO_PATH.finditer(source.read_text())
        if "*" not in match.group(1) and not (ROOT / match.group(1)).exists()
    ]
    assert missing == []
