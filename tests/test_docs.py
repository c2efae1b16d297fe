"""The documentation site (mkdocs.yml, docs/): it builds in strict mode, its generated
references cover what the code has, and every shell command its pages quote is marked.

The site is built once per test process, as ``make docs`` builds it, into a temporary
folder: a broken link or anchor, a page missing from the nav, or a reference that cannot
be generated (a setting or an error code without a description) fails the build. The
other tests read the built pages, so each fails if a generator leaves something out.

A fenced shell block (``sh``, ``bash``, ``shell``, ``console``) in README.md or a page
must follow a marker line: ``<!-- shell: tested -->`` (this module runs each of its
lines, which must exit 0), ``<!-- shell: run -->`` (run as written, by hand: too slow or
long-lived for the suite; the figures beside it came from it) or
``<!-- shell: example -->`` (a form to adapt: placeholders, a cluster, a domain).
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY
from pydantic_settings import BaseSettings
from starlette.routing import BaseRoute

from protocol.wire import ClientCommand, ErrorCode, ServerEvent
from runtime.config import CommonSettings
from server.app import create_app
from server.config import ServerSettings
from server.security import SecuritySettings
from stack.run import StackSettings
from tests.browser.webclient import installed_client
from tests.test_asyncapi import literal, members
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell|console)\b[^\n]*\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- shell: (tested|run|example) -->\n$")
SETTINGS: list[type[BaseSettings]] = [
    CommonSettings,
    SecuritySettings,
    ServerSettings,
    WorkerSettings,
    StackSettings,
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make docs`` builds it (strict), into a temporary folder."""
    installed_client()  # the site serves scripts from the web client's npm packages
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's HTML, entities decoded."""
    return html.unescape((site / page / "index.html").read_text(encoding="utf-8"))


def test_the_site_builds_in_strict_mode_with_every_page(site: Path) -> None:
    built = {p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")}
    sources = {
        p.relative_to(DOCS).with_suffix("").as_posix().removesuffix("index").rstrip("/") or "."
        for p in DOCS.rglob("*.md")
        if "hooks" not in p.parts
    }
    assert sources <= built, sources - built


def test_the_start_page_is_the_readme(site: Path) -> None:
    start = page_text(site, ".")
    first = (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert " ".join(first.split()) in " ".join(re.sub(r"<[^>]+>", "", start).split())


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.__name__)
def test_every_setting_is_in_the_configuration_page(site: Path, settings: type) -> None:
    page = page_text(site, "configuration")
    missing = [n.upper() for n in settings.model_fields if f"<code>{n.upper()}</code>" not in page]
    assert not missing, f"settings missing from the configuration page: {missing}"
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    absent = [n.upper() for n in settings.model_fields if n.upper() not in env_example]
    assert not absent, f"settings missing from .env.example: {absent}"


def test_a_setting_row_shows_its_default_and_bounds(site: Path) -> None:
    page = page_text(site, "configuration")
    row = re.search(r"<tr>\s*<td><code>PARLEY_PORT</code></td>(.*?)</tr>", page, re.S)
    assert row is not None
    assert "<code>8000</code>" in row.group(1) and "1 to 65535" in row.group(1)


def test_every_error_code_is_in_the_error_codes_page(site: Path) -> None:
    page = page_text(site, "api/errors")
    missing = [c.value for c in ErrorCode if f"<td><code>{c.value}</code></td>" not in page]
    assert not missing, f"error codes missing from the error codes page: {missing}"


def test_every_command_and_event_is_in_the_websocket_reference(site: Path) -> None:
    page = page_text(site, "api/websocket")
    types = [literal(m) for m in (*members(ClientCommand), *members(ServerEvent))]
    missing = [t for t in types if f'id="{t}"' not in page]
    assert not missing, f"commands and events missing from the WebSocket reference: {missing}"
    assert 'id="asyncapi-document"' in page  # the whole document, for the viewer


def api_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The app's REST routes, those of the routers it includes too."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:
            found += api_routes(router.routes)
    return found


def test_every_route_is_in_the_rest_reference(site: Path) -> None:
    page = page_text(site, "api/rest")
    app = create_app(ServerSettings(_env_file=None))  # type: ignore[call-arg]
    routes = [
        f"{method} {route.path}"
        for route in api_routes(app.routes)
        if route.include_in_schema
        for method in sorted(route.methods)
    ]
    missing = [r for r in routes if f"<code>{r}</code>" not in page]
    assert routes and not missing, f"routes missing from the REST reference: {missing}"
    schema = json.loads((site / "api" / "openapi.json").read_text(encoding="utf-8"))
    assert set(schema["paths"]) == {r.split(" ", 1)[1] for r in routes}


def test_every_metric_is_in_the_metrics_page(site: Path) -> None:
    import worker.app  # noqa: F401  (registers the worker's metrics)

    page = page_text(site, "operations/metrics")
    names = {m.name for m in REGISTRY.collect() if m.name.startswith("parley_")}
    missing = sorted(n for n in names if not re.search(rf"<code>{n}(_total)?</code>", page))
    assert names and not missing, f"metrics missing from the metrics page: {missing}"


def test_the_performance_page_reports_the_committed_result(site: Path) -> None:
    result = json.loads((DOCS / "performance" / "latest.json").read_text(encoding="utf-8"))
    page = page_text(site, "performance")
    assert result["started_at"] in page and result["machine"]["commit"] in page
    for scenario in result["scenarios"]:
        assert f"<code>{scenario['scenario']}</code>" in page


def shell_blocks() -> list[tuple[str, str, str]]:
    """Every fenced shell block of README.md and the pages: (page, marker, body)."""
    blocks = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for match in SHELL_BLOCK.finditer(text):
            marker = MARKER.search(text, 0, match.start())
            kind = marker.group(1) if marker and marker.end() == match.start() else "unmarked"
            blocks.append((path.relative_to(ROOT).as_posix(), kind, match.group(1)))
    return blocks


def test_every_shell_block_is_marked() -> None:
    unmarked = [(page, body) for page, kind, body in shell_blocks() if kind == "unmarked"]
    assert not unmarked, f"shell blocks without a <!-- shell: ... --> line: {unmarked}"


TESTED = [(page, body) for page, kind, body in shell_blocks() if kind == "tested"]


@pytest.mark.parametrize(("page", "body"), TESTED, ids=[b.strip() for _, b in TESTED])
def test_tested_commands_run_as_written(page: str, body: str) -> None:
    """Each command of a ``tested`` block runs, from the checkout, with the venv first on
    PATH (as after ``source .venv/bin/activate``), and exits 0."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in filter(None, (line.strip() for line in body.splitlines())):
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"{page}: {command}: {result.stderr[-2000:]}"


def quoted(pattern: str) -> set[str]:
    """What ``pattern``'s group matches in inline code or shell blocks of every page."""
    return {m for path in PAGES for m in re.findall(pattern, path.read_text(encoding="utf-8"))}


def test_quoted_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    named = quoted(r"(?m)(?:`|^)make ([a-z][\w-]*)")
    assert named and not named - targets, f"make targets the pages name: {named - targets}"


def test_quoted_python_modules_exist() -> None:
    named = quoted(r"(?m)(?:`|^)python -m ([a-z_][\w.]*)")
    missing = {m for m in named if importlib.util.find_spec(m) is None}
    assert named and not missing, f"modules the pages run that do not exist: {missing}"


def test_the_layout_page_names_every_top_level_folder() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {f.split("/", 1)[0] for f in tracked if "/" in f and not f.startswith(".")}
    layout = (DOCS / "design" / "layout.md").read_text(encoding="utf-8")
    missing = sorted(f for f in folders if f"| `{f}/` |" not in layout)
    assert not missing, f"folders missing from the layout page: {missing}"


def test_quoted_paths_exist() -> None:
    """Every path of the checkout a page quotes in code (``storage/lua/enqueue.lua``)
    exists, unless it is one the build makes (ignored by git: ``client/dist``)."""
    folders = "|".join(p.name for p in ROOT.iterdir() if p.is_dir() and p.name[0] != ".")
    path = re.compile(rf"(?<![\w./-])((?:{folders})/[\w./-]*\w)")
    quoted_paths = {
        (page.relative_to(ROOT).as_posix(), found)
        for page in PAGES
        for code in re.findall(r"`([^`\n]+)`", page.read_text(encoding="utf-8"))
        for found in path.findall(code)
        if not any(c in code for c in "<>*{")
    }
    missing = sorted(
        (page, p)
        for page, p in quoted_paths
        if not (ROOT / p).exists()
        and subprocess.run(["git", "check-ignore", "-q", f"{p}/"], cwd=ROOT, check=False).returncode
    )
    assert quoted_paths and not missing, f"paths the pages quote that do not exist: {missing}"


#: The packages whose layout rows name each of their modules.
PRODUCT_PACKAGES = ("protocol", "storage", "runtime", "server", "worker", "stack", "terminal")


def _layout_row(folder: str) -> str:
    layout = (DOCS / "design" / "layout.md").read_text(encoding="utf-8")
    (row,) = [line for line in layout.splitlines() if line.startswith(f"| `{folder}/` |")]
    return row


@pytest.mark.parametrize("package", PRODUCT_PACKAGES)
def test_the_layout_row_of_a_package_names_its_modules_and_no_other(package: str) -> None:
    """Each Python module of a product package (sub-packages included; ``__init__`` and
    the ``__main__`` entry points aside) is named in its row of the layout page, and
    each module the row names is one of them: the table follows the tree."""
    row = _layout_row(package)
    entry_points = ("__init__.py", "__main__.py")
    modules = {p.name for p in (ROOT / package).rglob("*.py") if p.name not in entry_points}
    named = set(re.findall(r"`(\w+\.py)`", row))
    assert not modules - named, f"{package}/ modules the layout page leaves out"
    assert not named - modules, f"{package}/ modules the layout page names, gone from the tree"
