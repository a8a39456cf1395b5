"""The JSON Schemas in policies/schema are what the pydantic models generate (no drift)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtwin.consent.schema import drifted, main, policy_schemas, write_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "policies" / "schema"


def test_schema_files_match_the_models() -> None:
    assert drifted(SCHEMAS) == [], "run: python -m fedtwin.consent.schema"


def test_a_changed_schema_file_is_reported_as_drift(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    path = tmp_path / "site-policy.schema.json"
    schema = json.loads(path.read_text())
    del schema["properties"]["regime"]
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    assert drifted(tmp_path) == ["site-policy.schema.json"]
    assert main([str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("name", sorted(policy_schemas()))
def test_schemas_are_closed_and_require_every_key_without_default(name: str) -> None:
    schema = json.loads(policy_schemas()[name])
    assert schema["additionalProperties"] is False
    assert "version" in schema["required"]
    assert schema["properties"]["max_epsilon_per_patient"]["exclusiveMinimum"] == 0
