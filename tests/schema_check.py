"""Check a document p2v wrote against its schema in p2v/schemas (docs/user/schemas.md).

`assert_valid(doc, "events")` fails the test with the first problem's path and message.
An event is checked against the schema of its own `event` first, so a bad `disk-done`
names the key that is wrong rather than "not valid under any of the given schemas".
`NAME/PART` checks against one entry of a schema's $defs: "report/domain" is what
`p2v register --json` prints, "report/verdict" what `p2v verify --json` prints.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from p2v import schemas


@functools.cache
def registry() -> Registry:
    """Every p2v schema under its $id, so events.schema.json finds report.schema.json."""
    resources = [(s["$id"], Resource.from_contents(s, default_specification=DRAFT202012))
                 for s in schemas.load_all().values()]
    return Registry().with_resources(resources)


@functools.cache
def validator(name: str, part: str | None = None) -> Draft202012Validator:
    """The validator of schema NAME, or of its $defs entry PART."""
    schema: dict[str, Any] = schemas.load(name)
    if part is not None:
        schema = {"$ref": f"{schema['$id']}#/$defs/{part}"}
    return Draft202012Validator(schema, registry=registry(),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(doc: Any, name: str) -> list[str]:
    """Every way DOC breaks schema NAME, each as `path: message` (empty: valid).

    DOC is taken as its JSON text reads (tuples are arrays): what a consumer gets."""
    doc = json.loads(json.dumps(doc))
    name, _, part = name.partition("/")
    checks = [validator(name, part or None)]
    defs = schemas.load(name).get("$defs", {})
    if part:
        assert part in defs, f"{name}.schema.json has no $defs/{part}"
    if name == "events" and not part and isinstance(doc, dict) and doc.get("event") in defs:
        checks.insert(0, validator(name, str(doc["event"])))
    for check in checks:
        errors = list(check.iter_errors(doc))
        if errors:
            first = best_match(errors)
            assert first is not None
            where = "/".join(str(p) for p in first.absolute_path) or "(the document)"
            return [f"{where}: {first.message}"] + [e.message for e in errors if e is not first]
    return []


def assert_valid(doc: Any, name: str) -> Any:
    """DOC itself, after checking it against schema NAME (events, inventory, report, caps,
    manifest, or NAME/PART); fails the test naming what is wrong."""
    found = problems(doc, name)
    assert not found, f"not a valid {name} document: {found[0]}\n{doc!r:.2000}"
    return doc


def assert_all_valid(docs: Iterable[Any], name: str) -> list[Any]:
    """Each of DOCS checked (e.g. every event of a run), returned as a list."""
    return [assert_valid(doc, name) for doc in docs]
