"""MkDocs hook: the pages whose content something else owns are generated at build time, so they
cannot drift from it. ``<!-- generated: cli -->`` becomes every command's ``--help`` (from the parser
the ``supa-vectors`` command runs); ``<!-- generated: http -->`` the routes of docs/openapi.json (the
document the Edge Function serves, itself checked to be current by tests/test_edge_functions.py);
``<!-- readme: NAME -->`` the README's part between ``<!-- site section NAME -->`` and its end marker, with
links made relative to docs/ (the README is the one text; the site shows it in parts)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[list[str], str]]:
    found = [(path, parser.format_help())]
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, [*path, name])
    return found


def cli_reference() -> str:
    from supa_vectors.cli import build_parser

    os.environ.setdefault("COLUMNS", "100")  # argparse wraps help to the terminal; fix it for the page
    found = _commands(build_parser(), ["supa-vectors"])
    # `migrate` takes its action as its first word (a PATH is the default), and builds that action's
    # options and help from it: each one is asked for separately.
    for action in ("verify", "rollback", "runs"):
        for path, text in _commands(build_parser(["migrate", action]), ["supa-vectors"]):
            if path == ["supa-vectors", "migrate"]:
                found.append(([*path, action], text))
    parts = [f"## `{' '.join(path)}`\n\n```text\n{text.rstrip()}\n```\n" for path, text in found]
    return "\n".join(parts)


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else schema.get("type", "")


def http_reference() -> str:
    document = json.loads((DOCS / "openapi.json").read_text())
    rows = ["| method | path | what | request body | answers |", "| --- | --- | --- | --- | --- |"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            summary = (operation.get("summary") or operation.get("description") or "").split("\n")[0]
            codes = ", ".join(sorted(operation.get("responses", {})))
            schema = _schema_name(body.get("schema", {}))
            rows.append(f"| {method.upper()} | `{path}` | {summary} | {schema} | {codes} |")
    title = document.get("info", {}).get("title", "")
    version = document.get("info", {}).get("version", "")
    return f"Generated from `docs/openapi.json` ({title} {version}).\n\n" + "\n".join(rows) + "\n"


def readme_section(name: str) -> str:
    readme = (DOCS.parent / "README.md").read_text()
    match = re.search(
        rf"<!-- site section {name} -->\n(.*?)\n<!-- end of site section {name} -->", readme, re.S
    )
    if match is None:
        raise ValueError(f"README.md has no section {name!r}")
    text = match.group(1)
    text = re.sub(r"\]\(docs/", "](", text)  # links into docs/ are pages of this site
    # Other files of the repository are not on the site: keep their names, drop the link.
    return re.sub(r"\[([^\]]+)\]\((?!https?:|#)([^)]+)\)", r"\1 (`\2` in the repository)", text)


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name in re.findall(r"<!-- readme: (\w+) -->", markdown):
        markdown = markdown.replace(f"<!-- readme: {name} -->", readme_section(name))
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: http -->" in markdown:
        markdown = markdown.replace("<!-- generated: http -->", http_reference())
    return markdown
