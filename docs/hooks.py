"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`): pages that are not files under docs/.

- ``index.md`` is README.md, ``CHANGELOG.md`` the top-level changelog;
- ``benchmarks/results/`` holds every ``benchmarks/results/*.md`` and ``*.png`` as they are in the repository, plus an
  index page; the nav entry ``benchmarks/results/index.md`` becomes a section with one line per result page, and a
  result page shows the figures whose names start with its own (``digits.md``: ``digits.png``,
  ``digits_samples.png``);
- ``api/<module>.md`` named in the nav and absent from docs/ is the mkdocstrings page of ``<module>``;
- MathJax (tex-svg-full, one self-contained file) comes from the django-static-mathjax package, so pages render
  math without a network.

Links are written as they are in the repository (README.md: ``docs/math.md``; docs/x.md:
``../benchmarks/results/accuracy.md``): each relative link is resolved against the page's place in the repository
and rewritten to that file's place in the site, and an inline code span naming a result file
(`` `benchmarks/results/ems.md` ``) becomes a link to it. Nothing is copied into the repository.
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_URI = "benchmarks/results"
RESULTS_INDEX = f"{RESULTS_URI}/index.md"
# repository path -> site path, for the files that are not under docs/
MOVED = {"README.md": "index.md", "CHANGELOG.md": "CHANGELOG.md"}
MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [["\\\\(", "\\\\)"]], displayMath: [["\\\\[", "\\\\]"]], processEscapes: true,
        processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex|md-ellipsis"}  // the table of contents too
};
"""


def result_pages() -> list[Path]:
    return sorted(RESULTS.glob("*.md"))


def figures_of(page: Path) -> list[Path]:
    return [p for p in sorted(RESULTS.glob("*.png")) if p.stem == page.stem or p.stem.startswith(page.stem + "_")]


def title_of(page: Path) -> str:
    for line in page.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem


def on_config(config):
    """The nav entry of the results index becomes a section: the index, then each result page."""

    def expand(items):
        out = []
        for item in items:
            if isinstance(item, dict):
                ((title, value),) = item.items()
                if value == RESULTS_INDEX:
                    pages = [{"Overview": RESULTS_INDEX}]
                    pages += [{p.stem: f"{RESULTS_URI}/{p.name}"} for p in result_pages()]
                    item = {title: pages}
                elif isinstance(value, list):
                    item = {title: expand(value)}
            out.append(item)
        return out

    if config.nav:
        config.nav = expand(config.nav)
    return config


def nav_uris(items) -> list[str]:
    out = []
    for item in items or []:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += nav_uris(value) if isinstance(value, list) else [value]
    return out


def api_page(module: str) -> str:
    """The mkdocstrings page of a module; the package's own page shows every name of ``__all__``, with a docstring
    or not (GRIDS, INTEGRATORS, __version__)."""
    if module != "ei_toolkit":
        return f"::: {module}\n"
    page = f"::: {module}\n    options:\n      show_if_no_docstring: true\n"
    for name in shadowed(ROOT / "ei_toolkit" / "__init__.py"):  # the module's function, not the module
        page += f"\n::: {module}.{name}.{name}\n    options:\n      heading_level: 2\n"
    return page


def shadowed(init: Path) -> list[str]:
    """Names that the package's ``__init__`` imports from its submodule of the same name (``from .generate import
    generate``): at run time ``ei_toolkit.generate`` is the function, but griffe sees the submodule there."""
    names = []
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names += [a.name for a in node.names if a.name == node.module and a.asname is None]
    return sorted(names)


def mathjax_file() -> Path:
    try:
        import mathjax  # django-static-mathjax: MathJax 3's files as package data
    except ImportError as e:
        raise SystemExit("docs: MathJax comes from the docs extra: pip install -e '.[docs]'") from e
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
    if not path.is_file():
        raise SystemExit(f"docs: {path} is missing (django-static-mathjax 3.x has it)")
    return path


def on_files(files: Files, config) -> Files:
    def add(src_uri: str, *, content: str | None = None, path: Path | None = None) -> None:
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, content=content,
                                        abs_src_path=None if path is None else str(path)))

    add("index.md", path=ROOT / "README.md")
    add("CHANGELOG.md", path=ROOT / "CHANGELOG.md")
    for p in [*result_pages(), *sorted(RESULTS.glob("*.png"))]:
        add(f"{RESULTS_URI}/{p.name}", path=p)
    lines = ["# Benchmark results", "",
             "The written-down results of the scripts in `benchmarks/` (each page names its command), as they are "
             "in the repository's `benchmarks/results/`.", ""]
    lines += [f"- [{title_of(p)}]({p.name})" for p in result_pages()]
    lines += ["", "## Figures", ""]
    for p in sorted(RESULTS.glob("*.png")):
        owner = next((q for q in result_pages() if p in figures_of(q)), None)
        lines += [f"### {p.name}", "", f"![{p.stem}]({p.name})", ""]
        if owner is not None:
            lines += [f"From [{owner.name}]({owner.name}).", ""]
    add(RESULTS_INDEX, content="\n".join(lines))
    for uri in nav_uris(config.nav):
        if isinstance(uri, str) and uri.startswith("api/") and uri.endswith(".md"):
            module = uri[len("api/"):-len(".md")]
            add(uri, content=api_page(module))
    add("javascripts/mathjax-config.js", content=MATHJAX_CONFIG)
    add("javascripts/mathjax/tex-svg-full.js", path=mathjax_file())
    return files


def repo_path(src_uri: str) -> str:
    """Where a site page lives in the repository."""
    for repo, site in MOVED.items():
        if src_uri == site:
            return repo
    return src_uri if src_uri.startswith(RESULTS_URI + "/") else f"docs/{src_uri}"


def site_path(repo: str) -> str | None:
    """Where a repository file lives in the site (None: not part of it)."""
    if repo in MOVED:
        return MOVED[repo]
    if repo.startswith("docs/"):
        return repo[len("docs/"):]
    if repo.startswith(RESULTS_URI + "/") and (ROOT / repo).is_file():
        return repo
    if repo in (RESULTS_URI, RESULTS_URI + "/"):
        return RESULTS_INDEX
    return None


LINK = re.compile(r"(\]\()([^)\s]+)(\))")
RESULT_CODE = re.compile(r"(?<![\[`])`(benchmarks/results/[\w.-]+\.(?:md|png))`(?!\])")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    here = posixpath.dirname(src)
    where = posixpath.dirname(repo_path(src))

    def relink(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        moved = site_path(posixpath.normpath(posixpath.join(where, path)))
        if moved is None or not path:
            return m.group(0)
        new = posixpath.relpath(moved, here or ".")
        return f"{m.group(1)}{new}{'#' + anchor if anchor else ''}{m.group(3)}"

    def code_link(m: re.Match) -> str:
        repo = m.group(1)
        if not (ROOT / repo).is_file():
            return m.group(0)
        return f"[`{repo}`]({posixpath.relpath(repo, here or '.')})"

    # outside fenced code blocks only
    parts, last = [], 0
    for block in FENCE.finditer(markdown):
        parts.append(RESULT_CODE.sub(code_link, LINK.sub(relink, markdown[last:block.start()])))
        parts.append(block.group(0))
        last = block.end()
    parts.append(RESULT_CODE.sub(code_link, LINK.sub(relink, markdown[last:])))
    markdown = "".join(parts)

    if src.startswith(RESULTS_URI + "/") and src != RESULTS_INDEX:
        figures = figures_of(RESULTS / posixpath.basename(src))
        if figures:
            markdown += "\n\n## Figures\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
    return markdown
