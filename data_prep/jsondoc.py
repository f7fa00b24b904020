"""Self-describing JSON documents (manifest.json, export config.json): parse and check format."""
from __future__ import annotations

import json


def parse_versioned(text: str, where: str, fmt: str, max_version: int, error: type[Exception] = ValueError) -> dict:
    """JSON text -> dict, checking its `format` and that `format_version` <= max_version.

    Errors are `error(...)` naming `where` (the file) and the problem.
    """
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise error(f"{where}: not valid JSON: {err}") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != fmt:
        raise error(f"{where}: not an {fmt} document (format={found!r})")
    if doc.get("format_version", 0) > max_version:
        raise error(f"{where}: format_version {doc['format_version']} is newer than this eofm reads ({max_version})")
    return doc
