"""The README's "Security" and "Configuration" sections name every environment variable
the code reads (a name mentioned only in passing elsewhere does not count), and
``.env.example`` sets only variables the code reads."""

from __future__ import annotations

from pathlib import Path

from tasks_server.config import CLIENT_ENV_VARIABLES, ENV_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_environment_variable_is_documented() -> None:
    text = README.read_text()
    documented = section(text, "Security") + section(text, "Configuration")
    missing = [
        name for name in (*ENV_VARIABLES, *CLIENT_ENV_VARIABLES) if f"`{name}`" not in documented
    ]
    assert missing == []


def test_the_configuration_table_has_one_row_per_server_variable() -> None:
    rows = [
        line
        for line in section(README.read_text(), "Configuration").splitlines()
        if line.startswith("| `")
    ]
    named = {name for line in rows for name in line.split("|")[1].replace("`", " ").split()}
    missing = [name for name in ENV_VARIABLES if name not in named]
    assert missing == []


def test_the_example_env_file_names_only_real_variables() -> None:
    names = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        setting = line.removeprefix("# ").strip()  # a commented-out setting counts too
        name, equals, _ = setting.partition("=")
        if equals and name.isupper() and " " not in name:
            names.append(name)
    assert "CIPHER_KEY" in names and "ADMIN_KEY" in names
    assert [name for name in names if name not in ENV_VARIABLES] == []
