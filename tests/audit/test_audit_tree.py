"""The incremental tree answers what the RFC 9162 reference recursions answer, for every size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.audit.merkle import (
    EMPTY_ROOT,
    consistency_path,
    inclusion_path,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from fedtwin.audit.tree import MerkleTree

leaf_lists = st.lists(st.binary(max_size=6), min_size=1, max_size=90).map(
    lambda data: [leaf_hash(d) for d in data]
)


@settings(max_examples=40)
@given(leaf_lists, st.data())
def test_roots_and_proofs_of_every_past_size_match_the_reference(
    leaves: list[bytes], data: st.DataObject
) -> None:
    grown = MerkleTree()
    for leaf in leaves:
        grown.append(leaf)
    bulk = MerkleTree(leaves)
    size = data.draw(st.integers(1, len(leaves)))
    prefix = leaves[:size]
    assert grown.root(size) == bulk.root(size) == root_of(prefix)
    index = data.draw(st.integers(0, size - 1))
    assert grown.inclusion_proof(index, size) == inclusion_path(prefix, index)
    assert bulk.inclusion_proof(index, size) == inclusion_path(prefix, index)
    old = data.draw(st.integers(1, size))
    assert grown.consistency_proof(old, size) == consistency_path(prefix, old)
    assert bulk.consistency_proof(old, size) == consistency_path(prefix, old)


def test_proofs_from_a_large_tree_verify_with_logarithmic_size() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(5000)]
    tree = MerkleTree(leaves)
    root = tree.root()
    for index in (0, 1, 2047, 2048, 4999):
        proof = tree.inclusion_proof(index)
        assert len(proof) <= 13  # ceil(log2(5000))
        verify_inclusion(leaves[index], index, tree.size, proof, root)
    for old in (1, 1024, 3000, 4999):
        verify_consistency(old, 5000, tree.consistency_proof(old), tree.root(old), root)


def test_empty_tree_has_the_hash_of_nothing_and_refuses_proofs() -> None:
    tree = MerkleTree()
    assert tree.size == 0
    assert tree.root() == EMPTY_ROOT
    with pytest.raises(ValueError, match="not in a tree"):
        tree.inclusion_proof(0)
    with pytest.raises(ValueError, match="no consistency proof"):
        tree.consistency_proof(0)


def test_sizes_beyond_the_tree_and_bad_leaves_are_refused() -> None:
    tree = MerkleTree([leaf_hash(b"a"), leaf_hash(b"b")])
    with pytest.raises(ValueError, match="tree size 3"):
        tree.root(3)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
