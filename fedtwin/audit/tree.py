"""An append-only RFC 9162 Merkle tree that answers roots and proofs for any past size.

Invariant: ``levels[h][i]`` is the hash of the *perfect* subtree of ``2**h`` leaves that starts
at leaf ``i * 2**h``; only complete subtrees are stored, so appending never changes a stored
node. Any range the RFC 9162 recursion asks for, ``[start, end)`` with ``start`` a multiple of
the largest power of two below ``end - start``, splits into O(log n) stored nodes; roots and
proofs for every past size therefore cost O(log n) hashes. The outputs equal those of the
reference recursions in :mod:`fedtwin.audit.merkle` (tested).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fedtwin.audit.merkle import EMPTY_ROOT, HASH_SIZE, NODE_PREFIX, node_hash, split_point


class MerkleTree:
    """Leaf hashes of a log and the perfect subtrees above them.

    Parameters
    ----------
    leaf_hashes : Iterable[bytes]
        Leaf hashes (``SHA-256(0x00 || data)``) to start with, oldest first.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        """The hash of leaf ``index``."""
        return self._levels[0][index]

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}")
        levels = self._levels
        levels[0].append(leaf)
        height = 0
        while len(levels[height]) % 2 == 0:
            if len(levels) == height + 1:
                levels.append([])
            below = levels[height]
            levels[height + 1].append(node_hash(below[-2], below[-1]))
            height += 1
        return len(levels[0]) - 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add many leaf hashes; a bulk build level by level when the tree is empty."""
        leaves = list(leaf_hashes)
        if self.size or not leaves:
            for leaf in leaves:
                self.append(leaf)
            return
        if any(len(leaf) != HASH_SIZE for leaf in leaves):
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        sha256 = hashlib.sha256
        levels = [leaves]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append(
                [
                    sha256(NODE_PREFIX + below[i] + below[i + 1]).digest()
                    for i in range(0, len(below) - 1, 2)
                ]
            )
        self._levels = levels

    def _range(self, start: int, end: int) -> bytes:
        """Tree hash of leaves ``[start, end)`` (non-empty)."""
        width = end - start
        if width & (width - 1) == 0 and start % width == 0:
            return self._levels[width.bit_length() - 1][start // width]
        k = split_point(width)
        return node_hash(self._range(start, start + k), self._range(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is not between 0 and {self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The tree hash of the first ``size`` leaves (default: all)."""
        size = self._check_size(size)
        return self._range(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 §2.1.3.1)."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = split_point(end - start)
            if index < start + k:
                path.append(self._range(start + k, end))
                end = start + k
            else:
                path.append(self._range(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the first ``old_size`` leaves are a prefix (RFC 9162 §2.1.4.1)."""
        new_size = self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
        path: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while m != end - start:
            k = split_point(end - start)
            if m <= k:
                path.append(self._range(start + k, end))
                end = start + k
            else:
                path.append(self._range(start, start + k))
                start += k
                m -= k
                complete = False
        if not complete:
            path.append(self._range(start, end))
        path.reverse()
        return path
