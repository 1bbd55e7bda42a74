"""Key files: an :class:`Identity` kept on disk as JSON with mode 0600.

``{"kind": "p2pmarket-key", "seed": hex, "public_key": hex}``, written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from p2pmarket.core.files import write_atomic
from p2pmarket.core.identity import Identity, IdentityError


def save_key(ident: Identity, path: Path) -> None:
    """Write the key file with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "p2pmarket-key", "seed": ident.seed.hex(),
           "public_key": ident.public_key.hex()}
    write_atomic(path, json.dumps(doc).encode() + b"\n", mode=0o600)


def load_key(path: Path) -> Identity:
    try:
        doc = json.loads(path.read_text())
        seed = bytes.fromhex(doc["seed"])
    except FileNotFoundError:
        raise IdentityError(f"no key file at {path}", str(path)) from None
    except (ValueError, KeyError, TypeError):
        raise IdentityError(f"{path} is not a p2pmarket key file", str(path)) from None
    ident = Identity(seed)
    if doc.get("public_key") not in (None, ident.public_key.hex()):
        raise IdentityError(f"{path}: public key does not match seed", str(path))
    return ident


def load_or_create_key(path: Path, puzzle_bits: int = 0) -> Identity:
    if path.exists():
        return load_key(path)
    ident = Identity.generate(puzzle_bits)
    save_key(ident, path)
    return ident
