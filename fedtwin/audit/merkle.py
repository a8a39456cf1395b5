"""RFC 9162 §2.1 Merkle tree maths: hashes, roots, proofs and their verification (pure).

The tree hash of ``n`` leaves is defined recursively (§2.1.1): ``MTH({}) = SHA-256()``,
``MTH({d}) = SHA-256(0x00 || d)`` and, with ``k`` the largest power of two below ``n``,
``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``. The proof builders here follow
the recursive definitions of §2.1.3.1 (``PATH``) and §2.1.4.1 (``PROOF``/``SUBPROOF``) over a
list of leaf hashes; they are the reference that :class:`~fedtwin.audit.tree.MerkleTree`
(the fast, incremental structure) is tested against. The verifiers implement the algorithms of
§2.1.3.2 and §2.1.4.2 step by step and fail closed: any malformed input raises
:class:`~fedtwin.errors.VerificationError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedtwin.errors import VerificationError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The tree hash of the empty tree, ``SHA-256()``."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    if n < 2:
        raise ValueError("a split needs at least two leaves")
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree hash of a list of leaf hashes, built level by level.

    Pairing neighbours left to right and carrying an odd last node up unchanged gives the same
    tree as the recursive definition of §2.1.1.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    sha256 = hashlib.sha256
    while len(level) > 1:
        paired = [
            sha256(NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_path(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])`` of §2.1.3.1: the audit path of one leaf (leaf first, root last)."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaf_hashes)} leaves")
    if len(leaf_hashes) == 1:
        return []
    k = split_point(len(leaf_hashes))
    if index < k:
        return [*inclusion_path(leaf_hashes[:k], index), root_of(leaf_hashes[k:])]
    return [*inclusion_path(leaf_hashes[k:], index - k), root_of(leaf_hashes[:k])]


def consistency_path(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """``PROOF(old_size, D[n])`` of §2.1.4.1: proves the old tree is a prefix of this one."""
    if not 0 < old_size <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from {old_size} to {len(leaf_hashes)} leaves")
    return _subproof(leaf_hashes, old_size, complete=True)


def _subproof(leaf_hashes: Sequence[bytes], m: int, complete: bool) -> list[bytes]:
    n = len(leaf_hashes)
    if m == n:
        return [] if complete else [root_of(leaf_hashes)]
    k = split_point(n)
    if m <= k:
        return [*_subproof(leaf_hashes[:k], m, complete), root_of(leaf_hashes[k:])]
    return [*_subproof(leaf_hashes[k:], m - k, False), root_of(leaf_hashes[:k])]


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for position, value in enumerate(hashes):
        if len(value) != HASH_SIZE:
            raise VerificationError(f"{what}[{position}] is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is entry ``index`` of the tree of ``size`` with ``root``.

    The algorithm of RFC 9162 §2.1.3.2.

    Raises
    ------
    VerificationError
        If the proof is malformed or does not lead to ``root``.
    """
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not below tree size {size}")
    _check_hashes("leaf hash", [leaf])
    _check_hashes("root", [root])
    _check_hashes("proof", proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise VerificationError("inclusion proof leads to a different root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    The algorithm of RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots; an old
    size of zero is refused, as a proof from the empty tree proves nothing.

    Raises
    ------
    VerificationError
        If the proof is malformed or the trees are not consistent.
    """
    if old_size < 1:
        raise VerificationError("consistency from an empty tree proves nothing")
    if new_size < old_size:
        raise VerificationError(f"new size {new_size} is smaller than old size {old_size}")
    if old_size == new_size:
        if proof:
            raise VerificationError("equal sizes need an empty consistency proof")
        if old_root != new_root:
            raise VerificationError("same size, different roots")
        return
    if not proof:
        raise VerificationError("empty consistency proof between different sizes")
    _check_hashes("proof", proof)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than needed")
    if fr != old_root:
        raise VerificationError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise VerificationError("consistency proof does not lead to the new root")
