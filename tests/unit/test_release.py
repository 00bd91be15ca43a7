"""Release hygiene: the changelog is in step with the package version."""

from __future__ import annotations

import re
from pathlib import Path

from ddbcache_hooks import __version__

ROOT = Path(__file__).parents[2]


def test_changelog_starts_with_unreleased_then_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert sections[0] == ("Unreleased", ""), sections[:2]
    assert sections[1][0] == __version__ and sections[1][1], (
        f"CHANGELOG.md's newest release is {sections[1][0]}, the package is {__version__}"
    )
    for name, _ in sections:  # Keep a Changelog: every heading links somewhere
        assert re.search(rf"^\[{re.escape(name)}\]: \S+$", text, re.MULTILINE), name
    # Every section says what kind of change it lists.
    kinds = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        headings = re.findall(r"^### (.+)$", block, re.MULTILINE)
        assert headings and set(headings) <= set(kinds), headings
