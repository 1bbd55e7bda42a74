"""OpenSSH public keys, checked: the buyer's ``--ssh-key`` and the host's
``host.set_key`` apply the same rules. Pure: no I/O.

:func:`parse_ssh_key` takes one OpenSSH public key line (a ``.pub`` file's content):
one of ``ssh-ed25519``, ``ssh-rsa`` (at least :data:`MIN_RSA_BITS` bits),
``ecdsa-sha2-nistp256/384/521``, whose base64 blob parses as that key type (RFC 4253 /
RFC 5656 / RFC 8709 wire encoding); anything else (a private key, options, another
type, junk) is an :class:`SshKeyError` saying what is wrong. The comment is kept only
when it is plain printable ASCII without quotes or backslashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from p2pmarket.core.errors import P2PMarketError

MAX_KEY_CHARS = 16384
MIN_RSA_BITS = 2048
_ECDSA = {"ecdsa-sha2-nistp256": ("nistp256", 32), "ecdsa-sha2-nistp384": ("nistp384", 48),
          "ecdsa-sha2-nistp521": ("nistp521", 66)}
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", *_ECDSA)
_COMMENT = re.compile(r"[\x20-\x7e]{0,200}")


class SshKeyError(P2PMarketError):
    """Not a usable OpenSSH public key."""


@dataclass(frozen=True)
class SshKey:
    """A checked OpenSSH public key."""

    type: str
    blob: bytes
    comment: str

    @property
    def line(self) -> str:
        text = f"{self.type} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:...`` fingerprint."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def string(self) -> bytes:
        if self.pos + 4 > len(self.data):
            raise SshKeyError("SSH key blob is truncated", self.pos)
        n = int.from_bytes(self.data[self.pos:self.pos + 4], "big")
        start, self.pos = self.pos + 4, self.pos + 4 + n
        if self.pos > len(self.data):
            raise SshKeyError("SSH key blob is truncated", n)
        return self.data[start:self.pos]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SshKeyError("SSH key blob has trailing bytes", len(self.data) - self.pos)


def parse_ssh_key(text: str) -> SshKey:
    """Check one OpenSSH public key line (a ``.pub`` file's content)."""
    if not isinstance(text, str) or len(text) > MAX_KEY_CHARS:
        raise SshKeyError("an SSH public key is a line of text of at most 16 KiB",
                         type(text).__name__ if not isinstance(text, str) else len(text))
    line = text.strip()
    if "PRIVATE KEY" in line:
        raise SshKeyError("this is a private key: give the public key (the .pub file)", "")
    if "\n" in line or "\r" in line:
        raise SshKeyError("give exactly one SSH public key", line.count("\n") + 1)
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise SshKeyError("not an OpenSSH public key: expected '<type> <base64> [comment]'",
                         line[:60])
    kind, b64 = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind not in KEY_TYPES:
        raise SshKeyError(f"unsupported SSH key type (use one of {', '.join(KEY_TYPES)})",
                         kind[:60])
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SshKeyError("SSH key is not valid base64", b64[:60]) from None
    r = _Reader(blob)
    if r.string() != kind.encode():
        raise SshKeyError("SSH key blob names another key type than its line", kind)
    if kind == "ssh-ed25519":
        if len(r.string()) != 32:
            raise SshKeyError("ssh-ed25519 key must be 32 bytes", kind)
    elif kind == "ssh-rsa":
        e, n = r.string(), r.string()
        bits = int.from_bytes(n, "big").bit_length()
        if not e or int.from_bytes(e, "big") < 3 or bits < MIN_RSA_BITS:
            raise SshKeyError(f"ssh-rsa key must have at least {MIN_RSA_BITS} bits", bits)
    else:
        curve, size = _ECDSA[kind]
        if r.string() != curve.encode():
            raise SshKeyError(f"{kind} key names another curve", kind)
        point = r.string()
        if len(point) != 1 + 2 * size or point[0] != 4:
            raise SshKeyError(f"{kind} key point is not an uncompressed {curve} point",
                             len(point))
    r.end()
    if not _COMMENT.fullmatch(comment) or '"' in comment or "\\" in comment:
        comment = ""
    return SshKey(kind, blob, comment)


__all__ = ["KEY_TYPES", "MIN_RSA_BITS", "SshKey", "SshKeyError", "parse_ssh_key"]
