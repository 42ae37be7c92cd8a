"""The documentation's links and the code's pointers into it resolve: every relative link in
README.md and docs/*.md names a file that exists and, with an anchor, one of its headings; and
every `README "Title"` or `docs/page.md "Title"` in the package, the benches and the tests
names a heading or a bold title of that page (Polygraphy's test_ux checks its READMEs' links
the same way). Moving a section without its pointers fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a pointer: the page, an optional comma, then a quoted title that may wrap onto the next line
# of a comment or docstring; a title ending in "..." is a prefix
POINTER = re.compile(r'(README|docs/[\w-]+\.md),? \\?"((?:[^"\\\n]|\n[ \t]*(?:# )?)+?)\\?"')


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def headings(page: Path) -> list[str]:
    return re.findall(r"^#+ (.+?)\s*$", page.read_text(), re.M)


def titles(page: Path) -> list[str]:
    """Headings and bold titles, backticks dropped and spaces collapsed."""
    text = page.read_text()
    found = headings(page) + re.findall(r"\*\*([^*]+)\*\*", text)
    return [" ".join(t.replace("`", "").split()) for t in found]


def test_there_are_pages_and_pointers():
    assert len(PAGES) >= 5
    assert len(_pointers()) >= 20


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or not re.fullmatch(r"[\w./-]*(#[\w-]+)?", target):
            continue  # a web address, or a formula in brackets
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def _pointers() -> list[tuple[str, str, str]]:
    sources = [p for pattern in ("onnx_obc/**/*.py", "bench/*.py", "bench/*.sh", "tests/**/*.py")
               for p in ROOT.glob(pattern) if p.name != "test_docs.py"]
    out = []
    for src in sources:
        for m in POINTER.finditer(src.read_text()):
            title = " ".join(re.sub(r"\n[ \t]*(# )?", " ", m.group(2)).split())
            out.append((str(src.relative_to(ROOT)), m.group(1), title))
    return out


def test_code_pointers_name_a_section_of_their_page():
    pages = {"README": ROOT / "README.md"}
    bad = []
    for src, page, title in _pointers():
        path = pages.get(page, ROOT / page)
        prefix = title.replace("`", "").removesuffix("...").strip().rstrip(".")
        if not prefix:
            bad.append(f"{src}: a pointer to {page} without a title")
        elif not path.exists():
            bad.append(f"{src}: {page} does not exist")
        elif not any(t.startswith(prefix) for t in titles(path)):
            bad.append(f'{src}: {page} has no section "{title}"')
    assert not bad, "\n".join(bad)


def test_a_moved_section_is_caught(tmp_path):
    """The check can fail: a title that is nowhere, and an anchor that is no heading."""
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n**A bold title.** text\n\n[x](p.md#nowhere) [y](p.md#top)\n")
    assert "A bold title." in titles(page) and slug("Top") in map(slug, headings(page))
    assert not any(t.startswith("Not here") for t in titles(page))
    assert "nowhere" not in {slug(h) for h in headings(page)}
