"""Every relative link in README.md and docs/*.md resolves.

A link ``[text](target)`` or image ``![alt](target)`` (or a reference definition ``[name]: target``) whose
target has no URL scheme must name an existing file or folder, relative to the page; a ``#anchor`` must name
a heading of the target page (the page itself when the path is empty) by GitHub's slug rule: the heading's
text without markup, lower-cased, every character dropped that is not a letter, a mark, a digit, ``_``, a
space or ``-``, spaces turned into ``-``, and ``-1``, ``-2``, ... appended to repeated slugs. Links to other
files may carry only GitHub's line anchors (``#L10``, ``#L10-L20``). Code (fenced blocks, inline spans) is
not read. External links (``https:``, ``mailto:``, ...) are not fetched.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\n\n).)+?\1", re.S)
# Link text may run over lines (not over a blank line) and hold one level of brackets.
_LINK = re.compile(r"!?\[(?:[^\[\]\n]|\n(?!\n)|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


def _outside_fences(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            out.append("")
        else:
            out.append(line if fence is None else "")
    return "\n".join(out)


def _prose(text: str) -> str:
    """``text`` with fenced code blocks and inline code spans blanked (line numbers kept)."""
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), _outside_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # images -> alt text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)             # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    keep = (c for c in text.strip().lower()
            if c in " -_" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return "".join(keep).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page, repeated slugs numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_fences(page.read_text(encoding="utf-8")).splitlines():
        m = _HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(2))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def links(page: Path):
    """``(line number, target)`` of every link, image and reference definition outside code (the line is
    the one where the target stands)."""
    text = _prose(page.read_text(encoding="utf-8"))
    found = [(m.start(1), m.group(1)) for m in _LINK.finditer(text)] + [(m.start(1), m.group(1)) for m in _REF_DEF.finditer(text)]
    for pos, t in sorted(found):
        yield text.count("\n", 0, pos) + 1, t[1:-1] if t.startswith("<") else t


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """``"page:line: target (why)"`` for each relative link of ``page`` that does not resolve."""
    bad = []
    for n, target in links(page):
        if _SCHEME.match(target):
            continue  # external
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        where = f"{page.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md":
            if unquote(anchor) not in anchors(dest):
                bad.append(f"{where} (no heading with this anchor in {dest.name})")
        elif anchor and not (dest.is_file() and _LINE_ANCHOR.match(anchor)):
            bad.append(f"{where} (an anchor into a file that is not markdown)")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_pages_exist_and_link_to_each_other():
    """The README links every page of docs/; the old second copy of the README is gone."""
    readme_targets = {t.partition("#")[0] for _, t in links(ROOT / "README.md")}
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= readme_targets
    assert not (ROOT / "docs" / "readme").exists()


@pytest.mark.parametrize("heading, expected", [
    ("Real PASCAL3D+ and OccludedPASCAL3D+", "real-pascal3d-and-occludedpascal3d"),
    ("4. The image→UV transform (appendix A.1)", "4-the-imageuv-transform-appendix-a1"),
    ("DMNT's predictor for `evaluate`", "dmnts-predictor-for-evaluate"),
    ("The `image_to_uv` op: L0–L3, 2×2 [quads](x.md)", "the-image_to_uv-op-l0l3-22-quads"),
    ("More budget, and what differs from the paper", "more-budget-and-what-differs-from-the-paper"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_the_checker_reports_planted_bad_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Usage\n\n## Usage\n\ntext\n", encoding="utf-8")
    (tmp_path / "code.py").write_text("x = 1\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n## Results (`make reproduce`)\n\n"
        "ok: [page](docs/page.md), [heading](docs/page.md#usage), [repeat](docs/page.md#usage-1), "
        "[here](#results-make-reproduce), [folder](docs/), ![img](docs/page.md), [line](code.py#L1), "
        "[web](https://example.org/missing), `[code](missing.md)`\n\n"
        "```\n[fenced](missing.md)\n```\n\n"
        "bad: [file](docs/missing.md)\n"
        "bad: [heading](docs/page.md#install)\n"
        "bad: [self](#results)\n"
        "bad: [third](docs/page.md#usage-2) ![image](figures/none.png)\n"
        "bad: [anchor into code](code.py#main)\n"
        "[ref]: docs/gone.md\n"
        "bad: [a link whose text runs\nover two lines](docs/page.md#nowhere) `[a span over\ntwo lines](gone.md)`\n",
        encoding="utf-8")
    assert broken_links(readme, tmp_path) == [
        "README.md:11: docs/missing.md (no such file)",
        "README.md:12: docs/page.md#install (no heading with this anchor in page.md)",
        "README.md:13: #results (no heading with this anchor in README.md)",
        "README.md:14: docs/page.md#usage-2 (no heading with this anchor in page.md)",
        "README.md:14: figures/none.png (no such file)",
        "README.md:15: code.py#main (an anchor into a file that is not markdown)",
        "README.md:16: docs/gone.md (no such file)",
        "README.md:18: docs/page.md#nowhere (no heading with this anchor in page.md)",
    ]
