"""RFC 9162 maths: the transparency-dev vectors, and properties of honest and altered proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.audit.merkle import (
    EMPTY_ROOT,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from fedtwin.errors import VerificationError

VECTORS = Path(__file__).parents[1] / "assets" / "rfc9162"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _hashes(items: list[str] | None) -> list[bytes]:
    return [base64.b64decode(item) for item in items or []]


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_every_vector_file_is_used() -> None:
    assert len(INCLUSION) + len(CONSISTENCY) == len(list(VECTORS.rglob("*.json"))) > 150
    assert (VECTORS / "NOTICE.md").is_file()


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector_verifies_exactly_when_it_should(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        base64.b64decode(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _hashes(case["proof"]),
        base64.b64decode(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector_verifies_exactly_when_it_should(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        case["size1"],
        case["size2"],
        _hashes(case["proof"]),
        base64.b64decode(case["root1"]),
        base64.b64decode(case["root2"]),
    )
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written out recursively, independent of the level-by-level build."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_hashes_are_domain_separated_sha256() -> None:
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert node_hash(b"a", b"b") != node_hash(b"b", b"a")


leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70).map(
    lambda data: [leaf_hash(d) for d in data]
)


@given(leaf_lists)
def test_level_by_level_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    assert root_of(leaves) == _mth(leaves)


@settings(max_examples=60)
@given(leaf_lists, st.data())
def test_every_honest_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    verify_inclusion(leaves[index], index, len(leaves), inclusion_path(leaves, index), _mth(leaves))


@settings(max_examples=60)
@given(leaf_lists, st.data())
def test_every_honest_consistency_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    old = data.draw(st.integers(1, len(leaves)))
    proof = consistency_path(leaves, old)
    verify_consistency(old, len(leaves), proof, _mth(leaves[:old]), _mth(leaves))


def _flip(value: bytes, bit: int) -> bytes:
    raw = bytearray(value)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


@settings(max_examples=80)
@given(st.lists(st.binary(max_size=8), min_size=2, max_size=40), st.data())
def test_any_one_bit_change_breaks_an_inclusion_proof(
    data_: list[bytes], data: st.DataObject
) -> None:
    leaves = [leaf_hash(d) for d in data_]
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof, root = inclusion_path(leaves, index), _mth(leaves)
    target = data.draw(st.sampled_from(["leaf", "root", *(["proof"] if proof else [])]))
    bit = data.draw(st.integers(0, 255))
    leaf = leaves[index]
    if target == "leaf":
        leaf = _flip(leaf, bit)
    elif target == "root":
        root = _flip(root, bit)
    else:
        position = data.draw(st.integers(0, len(proof) - 1))
        proof[position] = _flip(proof[position], bit)
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, len(leaves), proof, root)


@settings(max_examples=80)
@given(st.lists(st.binary(max_size=8), min_size=2, max_size=40), st.data())
def test_any_one_bit_change_breaks_a_consistency_proof(
    data_: list[bytes], data: st.DataObject
) -> None:
    leaves = [leaf_hash(d) for d in data_]
    old = data.draw(st.integers(1, len(leaves) - 1))
    proof = consistency_path(leaves, old)
    old_root, new_root = _mth(leaves[:old]), _mth(leaves)
    target = data.draw(st.sampled_from(["old", "new", "proof"]))
    bit = data.draw(st.integers(0, 255))
    if target == "old":
        old_root = _flip(old_root, bit)
    elif target == "new":
        new_root = _flip(new_root, bit)
    else:
        position = data.draw(st.integers(0, len(proof) - 1))
        proof[position] = _flip(proof[position], bit)
    with pytest.raises(VerificationError):
        verify_consistency(old, len(leaves), proof, old_root, new_root)


distinct_leaf_lists = st.lists(st.binary(max_size=12), min_size=2, max_size=70, unique=True).map(
    lambda data: [leaf_hash(d) for d in data]
)


@given(distinct_leaf_lists, st.data())
def test_a_proof_does_not_verify_for_another_index(
    leaves: list[bytes], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof, root = inclusion_path(leaves, index), _mth(leaves)
    other = data.draw(st.integers(0, 2 * len(leaves)).filter(lambda i: i != index))
    with pytest.raises(VerificationError):
        verify_inclusion(leaves[index], other, len(leaves), proof, root)
