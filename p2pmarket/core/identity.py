"""Ed25519 identities, node ids and key files (docs/design.md section 2).

A node id is the first 20 bytes of SHA-256(public key): it fits Kademlia's
160-bit space and cannot be chosen freely. An optional static puzzle
(S/Kademlia) requires SHA-256(node id) to start with ``bits`` zero bits.

Every signature has a domain (:mod:`p2pmarket.core.domains`): :meth:`Identity.sign`
and :func:`verify` take it and sign or check the framed message, so a signature made
for one purpose never verifies for another.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from p2pmarket.core.domains import Domain, framed
from p2pmarket.core.errors import P2PMarketError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
NODE_ID_SIZE = 20


class IdentityError(P2PMarketError):
    """Bad key file, bad key or bad signature."""


def node_id_of(public_key: bytes) -> bytes:
    """The 160-bit node id that belongs to ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise IdentityError("public key must be 32 bytes", len(public_key))
    return hashlib.sha256(public_key).digest()[:NODE_ID_SIZE]


def leading_zero_bits(data: bytes) -> int:
    n = 0
    for byte in data:
        if byte == 0:
            n += 8
            continue
        return n + 8 - byte.bit_length()
    return n


def meets_puzzle(node_id: bytes, bits: int) -> bool:
    """S/Kademlia static puzzle: SHA-256(node id) has ``bits`` leading zeros."""
    return bits <= 0 or leading_zero_bits(hashlib.sha256(node_id).digest()) >= bits


def verify(public_key: bytes, domain: Domain, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``message`` in
    ``domain``."""
    signed = framed(domain, message)
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


def parse_public_key(text: str) -> bytes:
    """A public key from its hex form (as printed by ``wallet show``)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise IdentityError("public key must be 64 hex digits", text) from None
    if len(key) != PUBLIC_KEY_SIZE:
        raise IdentityError("public key must be 64 hex digits", text)
    return key


def parse_key_or_node_id(text: str) -> bytes:
    """A public key (64 hex digits) or a node id (40 hex digits) from its hex form, as
    its 32 or 20 bytes: how a command or control call names a host."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) not in (PUBLIC_KEY_SIZE, NODE_ID_SIZE):
        raise IdentityError("host must be a hex public key (64 digits) or node id (40)", text)
    return raw


@dataclass(frozen=True)
class Identity:
    """A private signing key and what follows from it."""

    seed: bytes
    _key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)
    public_key: bytes = field(init=False, repr=False, compare=False)
    node_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise IdentityError("key seed must be 32 bytes", len(self.seed))
        key = nacl.signing.SigningKey(self.seed)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "public_key", bytes(key.verify_key))
        object.__setattr__(self, "node_id", node_id_of(self.public_key))

    def __repr__(self) -> str:  # never print the seed
        return f"Identity({self.public_key.hex()[:16]}…)"

    @classmethod
    def generate(cls, puzzle_bits: int = 0) -> Identity:
        while True:
            ident = cls(secrets.token_bytes(32))
            if meets_puzzle(ident.node_id, puzzle_bits):
                return ident

    def sign(self, domain: Domain, message: bytes) -> bytes:
        """This key's signature of ``message`` in ``domain``."""
        return self._key.sign(framed(domain, message)).signature
