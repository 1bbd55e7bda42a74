"""Keys, node ids, key files and the id puzzle."""

import hashlib
import os
import stat
from pathlib import Path

import pytest

from p2pmarket.core.domains import ENVELOPE, LEASE
from p2pmarket.core.identity import (
    Identity,
    IdentityError,
    leading_zero_bits,
    meets_puzzle,
    node_id_of,
    parse_public_key,
    verify,
)
from p2pmarket.core.keyfile import load_key, load_or_create_key


def test_node_id_is_sha256_prefix_of_key() -> None:
    ident = Identity(b"\x07" * 32)
    assert ident.node_id == hashlib.sha256(ident.public_key).digest()[:20]
    assert node_id_of(ident.public_key) == ident.node_id


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(ENVELOPE, b"hello")
    assert verify(ident.public_key, ENVELOPE, b"hello", sig)
    assert not verify(ident.public_key, ENVELOPE, b"hellO", sig)
    assert not verify(Identity.generate().public_key, ENVELOPE, b"hello", sig)
    assert not verify(ident.public_key, ENVELOPE, b"hello", sig[:10])
    assert not verify(ident.public_key, LEASE, b"hello", sig)   # another domain


def test_key_file_round_trip_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "k" / "node.key"
    ident = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == ident
    assert load_or_create_key(path) == ident
    assert ident.seed.hex() not in repr(ident)


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no key file"):
        load_key(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("not json")
    with pytest.raises(IdentityError, match="not a p2pmarket key file"):
        load_key(bad)
    mismatched = tmp_path / "mismatch"
    mismatched.write_text('{"seed": "' + "11" * 32 + '", "public_key": "' + "22" * 32 + '"}')
    with pytest.raises(IdentityError, match="does not match"):
        load_key(mismatched)


def test_puzzle() -> None:
    assert leading_zero_bits(b"\x00\x01") == 15
    assert leading_zero_bits(b"\x80") == 0
    ident = Identity.generate(puzzle_bits=6)
    assert meets_puzzle(ident.node_id, 6)
    assert meets_puzzle(ident.node_id, 0)


def test_parse_public_key() -> None:
    key = Identity.generate().public_key
    assert parse_public_key(key.hex()) == key
    for bad in ("zz", "00" * 31, ""):
        with pytest.raises(IdentityError):
            parse_public_key(bad)
