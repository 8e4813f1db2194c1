"""The docs site (mkdocs + mkdocstrings). The API reference (docs/api/) lists names that exist
and are documented, down to the public methods of their classes; every `#anchor` link of
docs/*.md and README.md names a heading of its page; the site builds with `mkdocs build
--strict` (broken links, docstrings griffe cannot parse, unresolved cross-references), shows no
raw reStructuredText (roles, directives) and typesets its maths with the KaTeX it ships."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)


def reference_entries() -> list[str]:
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    return [name for page in pages for name in ENTRY.findall(page.read_text())]


def resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def undocumented(obj: Any, name: str) -> list[str]:
    missing = [] if inspect.getdoc(obj) else [name]
    if inspect.isclass(obj):
        for attribute, member in vars(obj).items():
            if attribute.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, property)
            ):
                continue
            if not inspect.getdoc(getattr(obj, attribute)):  # an override may inherit its doc
                missing.append(f"{name}.{attribute}")
    elif inspect.ismodule(obj):
        for attribute in getattr(obj, "__all__", []):
            missing += undocumented(getattr(obj, attribute), f"{name}.{attribute}")
    return missing


def test_the_reference_lists_the_public_api() -> None:
    entries = set(reference_entries())
    for name in (
        "metaopt.MAML",
        "metaopt.MetaSGD",
        "metaopt.Reptile",
        "metaopt.testing",
        "metaopt.training.train",
    ):
        assert name in entries


@pytest.mark.parametrize("name", reference_entries())
def test_every_reference_entry_is_documented(name: str) -> None:
    assert not undocumented(resolve(name), name)


# --- Anchors: every `#x` link in docs/*.md and README.md names a heading of its target page ---

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def site_markdown() -> Any:
    """A Markdown converter with mkdocs.yml's extensions, so ids are the slugs mkdocs' toc makes."""
    markdown = pytest.importorskip("markdown")
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    names, settings = [], {}
    for entry in config["markdown_extensions"]:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        names.append(name)
        if options:
            settings[name] = options
    return markdown.Markdown(extensions=names, extension_configs=settings)


def rendered(page: Path, converter: Any) -> tuple[set[str], list[str]]:
    """The heading ids of ``page`` and the targets of its links (code blocks left out)."""
    html = converter.reset().convert(page.read_text())
    ids = set(re.findall(r'<h[1-6][^>]* id="([^"]+)"', html))
    return ids, re.findall(r'<a [^>]*href="([^"]+)"', html)


def broken_anchors(pages: list[Path]) -> list[str]:
    converter = site_markdown()
    headings, links = {}, {}
    for page in pages:
        headings[page], links[page] = rendered(page, converter)
    broken = []
    for page in pages:
        for href in links[page]:
            if "#" not in href or re.match(r"[a-z]+:", href):  # no anchor, or another site
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            if target.suffix != ".md":
                continue
            if target not in headings:
                if not target.is_file():
                    broken.append(f"{page.name}: {href} (no such page)")
                    continue
                headings[target], links[target] = rendered(target, converter)
            if anchor not in headings[target]:
                broken.append(f"{page.name}: {href} (no heading with that slug)")
    return broken


def test_every_anchor_link_names_a_heading() -> None:
    assert not broken_anchors(PAGES)


def test_a_missing_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# A\n\n## The real heading\n\n[b](b.md#gone) [self](#the-real-heading)\n"
    )
    (tmp_path / "b.md").write_text(
        "# B\n\n```bash\n# gone\n```\n\n[a](a.md#the-real-heading) [x](#gone)\n"
    )
    assert broken_anchors([tmp_path / "a.md", tmp_path / "b.md"]) == [
        "a.md: b.md#gone (no heading with that slug)",
        "b.md: #gone (no heading with that slug)",
    ]


# --- The built site: strict build, no raw reStructuredText, maths typeset offline ---

#: A Sphinx role (``:class:`X``` renders as ``:class:<code>X</code>``) or an RST directive.
RAW_MARKUP = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|math|ref|doc|const):(?:`|<code>)"
    r"|\.\. [a-z-]+::"
)
#: An autorefs reference left as text, or one of its placeholders left unreplaced.
UNRESOLVED = re.compile(r"\]\[(?:metaopt|supervised|rl)\.[\w.]*\]|<autoref\b")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once with ``mkdocs build --strict`` (any warning fails it: a broken
    link or anchor, a docstring griffe cannot parse, an autorefs reference without a target)."""
    pytest.importorskip("mkdocs")
    # Not --quiet: it lowers mkdocs' logger to ERROR, so --strict would count no warning.
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def raw_markup(site: Path) -> list[str]:
    found = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text()
        for pattern in (RAW_MARKUP, UNRESOLVED):
            found += [f"{page.relative_to(site)}: {m.group(0)}" for m in pattern.finditer(text)]
    return found


def test_the_site_shows_no_raw_markup(site: Path) -> None:
    assert not raw_markup(site)


def test_raw_markup_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text(
        "<p>see :class:<code>MAML</code>, :func:`train`</p>\n<p>.. math:: x</p>\n"
        "<p><code>MAML</code>][metaopt.MAML]</p>"
    )
    assert len(raw_markup(tmp_path)) == 4


def test_the_maths_is_typeset_offline(site: Path) -> None:
    """arithmatex wraps the docstrings' maths; the page loads KaTeX and its fonts from the site."""
    folder = site / "api" / "algorithms"
    page = (folder / "index.html").read_text()
    assert '<span class="arithmatex">' in page and '<div class="arithmatex">' in page
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    remote = [a for a in assets if re.match(r"[a-z]+:|//", a)]
    assert not [a for a in remote if "katex" in a or "mathjax" in a.lower()]
    local = {Path(a).name: (folder / a).resolve() for a in assets if a not in remote}
    for name in ("katex.min.js", "katex.min.css", "katex-render.js"):
        assert name in local and local[name].is_file(), name
    css = local["katex.min.css"]
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", css.read_text())
    assert fonts and all((css.parent / font).is_file() for font in fonts)
