"""The README is a front door (issue 21): its first screen gets a new user from `git clone` to a
client talking to the switch, and every link in it and in docs/ leads somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_SCREEN = 60  # lines
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # '#' in code is no heading
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("needle", [
    "./setup.sh --demo",
    "llm-switch add ",
    "## Point your client at it",
    "journalctl --user -u llm-switch -f",
])
def test_first_screen_holds(needle):
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    assert needle in first, f"README's first {FIRST_SCREEN} lines lack {needle!r}"


@pytest.mark.parametrize("name, expected", [
    ("Switching less: memory budget, queue, idle unload, preload",
     "switching-less-memory-budget-queue-idle-unload-preload"),
    ("Your own models, in detail", "your-own-models-in-detail"),
    ("`models.NAME.unit`", "modelsnameunit"),
    ("Try it: the demo", "try-it-the-demo"),
])
def test_slug(name, expected):
    assert slug(name) == expected


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_somewhere(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto: — not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_ci_commands_shown_exactly():
    """.ci/run greps the README for these two lines and runs them."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert "sudo tests/setup-host.sh" in lines
    assert ".venv/bin/python -m pytest" in lines
