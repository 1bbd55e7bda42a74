"""Merkle trees over a batch of one owner's entries, and the owner's proof (docs/design.md §4).

An owner signs one root over a batch of consecutive entries of its chain. The
tree is RFC 6962's (the left subtree holds the largest power of two below the
size), with domain-separated hashes: a leaf is ``SHA-256(0x00 || owner || seq
(8 bytes, big-endian) || entry hash)``, an inner node ``SHA-256(0x01 || left ||
right)``, so no leaf passes for a node and a leaf names its owner and seq.

:class:`OwnerProof` is what stands for one entry's owner signature: the
signature of the batch's root, the entry's ``index`` in the batch, the batch
``size`` and the audit path (RFC 9162 section 2.1.3). Its bytes are the 64-byte
signature alone for a batch of one (then the owner signed the entry itself, as
before batches), else ``sig || index (2 bytes) || size (2 bytes) || path``
with exactly as many 32-byte hashes as ``(index, size)`` call for. A batch
holds at most :data:`MAX_LEAVES` entries, so a path has at most
``log2(MAX_LEAVES)`` hashes. Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from p2pmarket.core.identity import SIGNATURE_SIZE
from p2pmarket.ledger.errors import LedgerError

HASH_SIZE = 32
MAX_LEAVES = 64  # a path of at most 6 hashes: a certificate stays under 1 KB
_LEAF, _NODE = b"\x00", b"\x01"
_sha = hashlib.sha256


def leaf_hash(owner: bytes, seq: int, entry_hash: bytes) -> bytes:
    return _sha(_LEAF + owner + seq.to_bytes(8, "big") + entry_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha(_NODE + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two below ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` (at least one): the leaf itself for one."""
    if not leaves:
        raise LedgerError("a Merkle tree needs at least one leaf", "leaves")
    level = list(leaves)
    if len(level) == 1:
        return level[0]
    k = _split(len(level))
    return node_hash(tree_root(level[:k]), tree_root(level[k:]))


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The hashes that lead from leaf ``index`` to the root, leaf side first."""
    if not 0 <= index < len(leaves):
        raise LedgerError("leaf index out of range", {"index": index, "size": len(leaves)})
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*audit_path(leaves[:k], index), tree_root(leaves[k:])]
    return [*audit_path(leaves[k:], index - k), tree_root(leaves[:k])]


@functools.lru_cache(maxsize=4096)
def path_length(index: int, size: int) -> int:
    """How many hashes the path of leaf ``index`` in a tree of ``size`` leaves has."""
    n = 0
    while size > 1:
        k = _split(size)
        if index < k:
            size = k
        else:
            index, size = index - k, size - k
        n += 1
    return n


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` leads to from ``leaf`` at ``index`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size or len(path) != path_length(index, size):
        raise LedgerError("the Merkle path does not fit its index and size",
                          {"index": index, "size": size, "path": len(path)})
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r


@dataclass(frozen=True)
class OwnerProof:
    """The owner's signature of a batch root, and where one entry sits under it."""

    sig: bytes
    index: int = 0
    size: int = 1
    path: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.sig, bytes) or len(self.sig) != SIGNATURE_SIZE:
            raise LedgerError("owner signature must be 64 bytes", "sig")
        if not 1 <= self.size <= MAX_LEAVES or not 0 <= self.index < self.size:
            raise LedgerError("bad batch index or size", {"index": self.index,
                                                          "size": self.size,
                                                          "max": MAX_LEAVES})
        if len(self.path) != path_length(self.index, self.size) or \
                any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in self.path):
            raise LedgerError("the Merkle path does not fit its index and size",
                              {"index": self.index, "size": self.size})

    @property
    def single(self) -> bool:
        return self.size == 1

    def root(self, leaf: bytes) -> bytes:
        return root_from_path(leaf, self.index, self.size, self.path)

    def encode(self) -> bytes:
        if self.size == 1:
            return self.sig
        return (self.sig + self.index.to_bytes(2, "big") + self.size.to_bytes(2, "big")
                + b"".join(self.path))

    @classmethod
    def decode(cls, data: object) -> OwnerProof:
        """Parse and check proof bytes (network input): a clear :class:`LedgerError`."""
        if not isinstance(data, bytes) or len(data) < SIGNATURE_SIZE:
            raise LedgerError("owner signature must be bytes of at least 64", "sig")
        if len(data) == SIGNATURE_SIZE:
            return cls(data)
        if len(data) < SIGNATURE_SIZE + 4 or (len(data) - SIGNATURE_SIZE - 4) % HASH_SIZE:
            raise LedgerError("malformed owner batch proof", len(data))
        index = int.from_bytes(data[64:66], "big")
        size = int.from_bytes(data[66:68], "big")
        if size < 2:
            raise LedgerError("a batch proof names a batch of at least two", size)
        n = (len(data) - 68) // HASH_SIZE
        return cls(data[:SIGNATURE_SIZE], index, size,
                   tuple(data[68 + i * HASH_SIZE:100 + i * HASH_SIZE] for i in range(n)))


def batch_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``leaves`` and every leaf's path, in one pass (n - 1 node hashes)."""
    paths: list[list[bytes]] = [[] for _ in leaves]

    def build(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        mid = lo + _split(hi - lo)
        left, right = build(lo, mid), build(mid, hi)
        for i in range(lo, mid):
            paths[i].append(right)
        for i in range(mid, hi):
            paths[i].append(left)
        return node_hash(left, right)

    if not leaves:
        raise LedgerError("a Merkle tree needs at least one leaf", "leaves")
    return build(0, len(leaves)), paths
