"""JSON Schemas of the policy documents, generated from the pydantic models (never hand-edited).

Run ``python -m fedtwin.consent.schema [FOLDER]`` to (re)write ``policies/schema/``;
``--check`` exits 1 when the files on disk differ from what the models generate.

Invariant: :func:`policy_schemas` is a pure function of the models, and the text written for a
schema is deterministic (sorted keys, two-space indent, one final newline), so a test can
regenerate it in memory and compare byte for byte.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fedtwin.consent.policy import ConsortiumPolicy, SitePolicy

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES: dict[str, type[SitePolicy] | type[ConsortiumPolicy]] = {
    "consortium-policy.schema.json": ConsortiumPolicy,
    "site-policy.schema.json": SitePolicy,
}


def policy_schemas() -> dict[str, str]:
    """File name → schema text, as :func:`write_schemas` writes it."""
    texts: dict[str, str] = {}
    for name, model in SCHEMA_FILES.items():
        schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}
        texts[name] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return texts


def write_schemas(folder: Path) -> list[Path]:
    """Write every schema into ``folder`` (via a temporary name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in policy_schemas().items():
        target = folder / name
        partial = folder / f".{name}.tmp"
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
        written.append(target)
    return written


def drifted(folder: Path) -> list[str]:
    """Names of the schema files in ``folder`` that are missing or differ from the models."""
    return [
        name
        for name, text in policy_schemas().items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Write the schemas (default ``policies/schema``), or check them with ``--check``."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    folders = [a for a in args if a != "--check"]
    folder = Path(folders[0]) if folders else Path("policies/schema")
    if check:
        stale = drifted(folder)
        for name in stale:
            print(f"{folder / name}: out of date (run python -m fedtwin.consent.schema)")
        return 1 if stale else 0
    for path in write_schemas(folder):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
