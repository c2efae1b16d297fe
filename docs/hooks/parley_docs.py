"""MkDocs hook: fills the site's generated parts at build time, so nothing is written twice.

A page asks for a generated part with a line of its own::

    <!-- generated: settings runtime.config:CommonSettings -->

and the hook replaces the line with the part (``tables.py`` makes each). The parts:

- ``readme``: README.md, its links into ``docs/`` made relative to the site;
- ``make-help``: what ``make help`` prints;
- ``settings MODULE:CLASS``: the class's own settings;
- ``error-codes``, ``socket-commands``, ``socket-events``, ``close-codes``: from
  ``docs/asyncapi.yaml`` (and ``protocol.wire.ErrorCode``);
- ``asyncapi-viewer``: the whole AsyncAPI document, rendered in the page by the AsyncAPI
  Initiative's React component (``@asyncapi/react-component``, from ``client/``'s npm
  packages);
- ``rest-routes``: the routes of the app's OpenAPI schema, which the build also writes to
  ``api/openapi.json`` for Swagger UI (``mkdocs-swagger-ui-tag``);
- ``metrics``: the server's and the worker's Prometheus metrics;
- ``performance``: ``docs/performance/latest.json``, the benchmark run the page reports.

An unknown part, or a source that is incomplete, fails the build (``PluginError``).
Mermaid diagrams render with the mermaid bundle from ``client/``'s npm packages, so the
site needs no network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import tables  # beside this file: MkDocs puts its folder on sys.path while loading it
import yaml
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

ROOT = Path(__file__).resolve().parents[2]

MARKER = re.compile(r"^<!-- generated: ([\w-]+)(?: (\S+))? -->$", re.M)
NODE_MODULES = ROOT / "client" / "node_modules"
#: Files of npm packages the site serves: where in the site, from where in node_modules.
VENDORED = {
    "assets/vendor/mermaid.min.js": "mermaid/dist/mermaid.min.js",
    "assets/vendor/asyncapi.js": "@asyncapi/react-component/browser/standalone/index.js",
    "assets/vendor/asyncapi.css": "@asyncapi/react-component/styles/default.min.css",
}
OPENAPI = "api/openapi.json"


@cache
def asyncapi() -> dict[str, Any]:
    """docs/asyncapi.yaml, parsed."""
    document: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    return document


@cache
def openapi() -> dict[str, Any]:
    """The OpenAPI schema of the app as the server builds it, with the default settings."""
    from server.app import create_app
    from server.config import ServerSettings

    schema: dict[str, Any] = create_app(ServerSettings(_env_file=None)).openapi()
    return schema


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Make the checkout importable: ``bench`` is not installed, only the product is."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated OpenAPI schema and the vendored scripts to the site."""
    for site_path, package_path in VENDORED.items():
        source = NODE_MODULES / package_path
        if not source.is_file():
            raise PluginError(
                f"{source} is missing: install the web client's npm packages "
                "(make client-deps) before building the site"
            )
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    files.append(File.generated(config, OPENAPI, content=json.dumps(openapi(), indent=2)))
    return files


def readme(page: Page) -> str:
    """README.md for the site: its ``docs/...`` links relative to ``page``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(
        r"\]\(docs/([^)]*)\)",
        lambda m: f"]({get_relative_url(m.group(1), page.file.src_uri)})",
        text,
    )


def make_help() -> str:
    """What ``make help`` prints: the Makefile's targets, as the Makefile says them."""
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return f"```text\n{result.stdout.rstrip()}\n```"


def asyncapi_viewer(page: Page) -> str:
    """The whole AsyncAPI document, rendered in the browser by the React component from
    the page's own copy of it (a script element holds text as it is, unescaped)."""
    source = (ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    if "</" in source:
        raise ValueError("asyncapi.yaml holds '</', which would end its script element")

    def url(site_path: str) -> str:
        return get_relative_url(site_path, page.url or ".")

    return (
        f'<link rel="stylesheet" href="{url("assets/vendor/asyncapi.css")}">\n'
        f'<script type="text/plain" id="asyncapi-document">\n{source}</script>\n'
        '<div id="asyncapi"></div>\n'
        f'<script src="{url("assets/vendor/asyncapi.js")}"></script>\n'
        f'<script src="{url("assets/javascripts/asyncapi-render.js")}"></script>\n'
    )


def generated(kind: str, argument: str | None, page: Page) -> str:
    """The part ``kind`` of a marker, for ``page``."""
    from protocol.wire import ErrorCode

    if kind == "readme":
        return readme(page)
    if kind == "make-help":
        return make_help()
    if kind == "settings" and argument:
        module, _, name = argument.partition(":")
        return tables.settings_table(getattr(__import__(module, fromlist=[name]), name))
    if kind == "error-codes":
        return tables.error_codes_table(asyncapi(), ErrorCode)
    if kind in ("socket-commands", "socket-events"):
        action = "receive" if kind == "socket-commands" else "send"
        return tables.socket_messages_table(asyncapi(), action)
    if kind == "close-codes":
        return tables.close_codes_table(asyncapi())
    if kind == "asyncapi-viewer":
        return asyncapi_viewer(page)
    if kind == "rest-routes":
        return tables.rest_routes(openapi())
    if kind == "metrics":
        return tables.metrics_table(("server", "worker"))
    if kind == "performance":
        path = ROOT / "docs" / "performance" / "latest.json"
        return tables.performance_table(json.loads(path.read_text(encoding="utf-8")))
    raise PluginError(f"{page.file.src_uri}: unknown generated part {kind!r}")


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each marker line of the page with its generated part."""

    def replace(match: re.Match[str]) -> str:
        try:
            return generated(match.group(1), match.group(2), page)
        except (
            ValueError,
            KeyError,
            ImportError,
            AttributeError,
            OSError,
            subprocess.SubprocessError,
        ) as e:
            raise PluginError(f"{page.file.src_uri}: {match.group(0)}: {e}") from e

    return MARKER.sub(replace, markdown)
