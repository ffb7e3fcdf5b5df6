"""The documentation site builds with warnings as errors (broken links, pages missing from nav)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="MkDocs is not installed (the docs extra)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


REFERENCE_PAGES = ("installing", "cli", "video", "weights", "export", "serving", "benchmarks", "performance", "model",
                   "training-reference", "verification", "layout")


@pytest.mark.parametrize("name", REFERENCE_PAGES)
def test_every_page_says_what_it_covers(name):
    first_paragraph = (ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert first_paragraph.startswith("This page covers"), f"{name}.md: the first paragraph should say what it covers"


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_docs_speak_of_the_project_not_of_sessions():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(a|one|this|that|each|the|no|every) sessions?\b", text, flags=re.I), \
            f"{path.name} speaks of a session, not of the project"
