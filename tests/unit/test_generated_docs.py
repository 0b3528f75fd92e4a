"""Generated files of the contract: the reference pages and the AsyncAPI document match
what the code produces, every field is described, and the AsyncAPI document passes the
official AsyncAPI parser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from contracts.asyncapi import asyncapi_document
from contracts.schemas import all_schemas
from services.cli.generate import ASYNCAPI, REFERENCE, ROOT, render_json
from services.cli.reference import PAGES

VALIDATOR = ROOT / "devtools" / "asyncapi"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_committed_reference_page_matches_the_code(name: str) -> None:
    path = REFERENCE / name
    assert path.is_file(), f"docs/reference/{name} is missing: run `just schemas`"
    assert path.read_text() == PAGES[name](), (
        f"docs/reference/{name} drifted from the code: run `just schemas`"
    )


def test_no_stale_reference_pages() -> None:
    stale = {p.name for p in REFERENCE.glob("*.md")} - set(PAGES)
    assert not stale, f"reference pages no generator writes: {sorted(stale)}"


def test_committed_asyncapi_matches_the_contract() -> None:
    assert ASYNCAPI.read_text() == render_json(asyncapi_document()), (
        "contracts/asyncapi.json drifted from the contract: run `just schemas`"
    )


def _undescribed(node: Any, path: str) -> list[str]:
    missing = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if name != "kind" and not prop.get("description"):
                missing.append(f"{path}.{name}")
        for key, value in node.items():
            missing.extend(_undescribed(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            missing.extend(_undescribed(value, f"{path}[{i}]"))
    return missing


def test_every_field_of_the_contract_is_described() -> None:
    missing = []
    for name, schema in all_schemas().items():
        missing.extend(_undescribed(schema, name))
    assert not missing, f"fields without a description (they feed the docs): {missing}"


def official_parser(document: Path) -> subprocess.CompletedProcess[str]:
    """Run the official AsyncAPI parser (devtools/asyncapi) on ``document``."""
    node = shutil.which("node")
    assert node, "node is needed to run the AsyncAPI parser"
    assert (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "the AsyncAPI parser is not installed: run `just asyncapi-validator` (`just test` does)"
    )
    return subprocess.run(
        [node, str(VALIDATOR / "validate.mjs"), str(document)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_asyncapi_document_passes_the_official_parser() -> None:
    done = official_parser(ASYNCAPI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid AsyncAPI 3.0.0" in done.stdout


def test_the_parser_refuses_a_broken_document(tmp_path: Path) -> None:
    """The validator is real: a dangling reference and a bad payload type fail it."""
    doc = asyncapi_document()
    doc["operations"]["publishQueued"]["channel"] = {"$ref": "#/channels/nowhere"}
    doc["components"]["schemas"]["Queued"]["properties"]["tool"]["type"] = "text"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    done = official_parser(bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "invalid-ref" in done.stdout


def test_asyncapi_covers_every_event_and_endpoint() -> None:
    doc = asyncapi_document()
    addresses = {c["address"] for c in doc["channels"].values()}
    for kind in ("queued", "cancel", "started", "log", "progress", "terminal"):
        assert f"job.{{job_id}}.{kind}" in addresses
    for subject in (
        "domed.jobs.submit",
        "domed.jobs.cancel",
        "domed.tools.list",
        "domed.tools.get",
        "domed.tools.explain",
        "domed.jobs.get",
        "domed.jobs.list",
        "domed.jobs.events",
    ):
        assert subject in addresses
    for op in doc["operations"].values():
        if op["action"] == "receive":
            replies = [m["$ref"] for m in op["reply"]["messages"]]
            assert any(r.endswith("/error") for r in replies)


def test_examples_in_the_docs_are_checked_against_their_schemas() -> None:
    from services.cli import examples

    for kind, event in examples.EVENTS.items():
        examples.checked(f"event.{kind}", event)
    for name, body in examples.MESSAGES.items():
        examples.checked(name, body)
    with pytest.raises(ValueError, match="breaks its schema"):
        examples.checked("event.log", {**examples.EVENTS["log"], "seq": "first"})
