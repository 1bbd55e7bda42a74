"""What a guest boots and how the buyer's key gets in: pure, no I/O.

- :class:`GuestBoot`: what to boot. Either the account's disk volume (the
  buyer's image: qcow2 or raw, see :func:`image_format`), or direct kernel boot
  (``kernel``, ``initrd``, ``cmdline``: paths on the host, for host-provided
  kernel+initramfs images such as the test guest), with the volume attached as
  a second disk when the account has one.
- :func:`parse_ssh_key`: an OpenSSH public key line, checked: one of
  ``ssh-ed25519``, ``ssh-rsa`` (at least 2048 bits), ``ecdsa-sha2-nistp256/384/521``,
  whose base64 blob parses as that key type (RFC 4253 / RFC 5656 / RFC 8709
  wire encoding); anything else (a private key, options, another type, junk)
  is a :class:`GuestError` saying what is wrong.
- :func:`seed_files`: the cloud-init NoCloud seed (the ISO 9660 volume labelled
  ``cidata`` that :mod:`p2pmarket.host.vmm.seediso` writes), two files:

  ``meta-data``::

      instance-id: <domain name>-<8 hex of the key's SHA-256>
      local-hostname: <domain name, '_' -> '-'>

  ``user-data``::

      #cloud-config
      disable_root: false
      ssh_pwauth: false
      ssh_authorized_keys:
        - "<type> <base64> [comment]"

  The key is re-emitted from its parsed fields (the comment kept only when it
  is plain printable ASCII without quotes or backslashes), so nothing from the
  buyer reaches the YAML unchecked. ``disable_root: false`` lets the key log in
  as root on cloud images too (they also install it for their default user);
  the test guest's init reads the same list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from p2pmarket.auction import HostError

MAX_KEY_CHARS = 16384
MIN_RSA_BITS = 2048
_ECDSA = {"ecdsa-sha2-nistp256": ("nistp256", 32), "ecdsa-sha2-nistp384": ("nistp384", 48),
          "ecdsa-sha2-nistp521": ("nistp521", 66)}
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", *_ECDSA)
_COMMENT = re.compile(r"[\x20-\x7e]{0,200}")
QCOW2_MAGIC = b"QFI\xfb"
_FOREIGN = ((0, b"KDMV", "vmdk"), (0, b"vhdxfile", "vhdx"), (0x40, b"\x7f\x10\xda\xbe", "vdi"),
            (0, b"conectix", "vhd"))
HEAD_BYTES = 4096   # what image_format needs to see of an image


class GuestError(HostError):
    """A guest cannot be set up from this input (bad key, image, boot settings)."""


@dataclass(frozen=True)
class GuestBoot:
    """What a guest boots: the account's volume (``kernel`` None) or a host kernel."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None

    def __post_init__(self) -> None:
        for name in ("kernel", "initrd"):
            value = getattr(self, name)
            if value is not None and (not value.startswith("/") or "\0" in value):
                raise GuestError(f"{name} must be an absolute path", value[:200])
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise GuestError("initrd and cmdline need a kernel", self.initrd or self.cmdline)
        if self.cmdline is not None and (len(self.cmdline) > 1024
                                         or not _COMMENT.fullmatch(self.cmdline)):
            raise GuestError("cmdline must be printable ASCII, at most 1024 chars",
                             self.cmdline[:200])

    @property
    def direct(self) -> bool:
        """Direct kernel boot (else the first disk boots)."""
        return self.kernel is not None


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
            raise GuestError("SSH key blob is truncated", self.pos)
        n = int.from_bytes(self.data[self.pos:self.pos + 4], "big")
        start, self.pos = self.pos + 4, self.pos + 4 + n
        if self.pos > len(self.data):
            raise GuestError("SSH key blob is truncated", n)
        return self.data[start:self.pos]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise GuestError("SSH key blob has trailing bytes", len(self.data) - self.pos)


def parse_ssh_key(text: str) -> SshKey:
    """Check one OpenSSH public key line (a ``.pub`` file's content)."""
    if not isinstance(text, str) or len(text) > MAX_KEY_CHARS:
        raise GuestError("an SSH public key is a line of text of at most 16 KiB",
                         type(text).__name__ if not isinstance(text, str) else len(text))
    line = text.strip()
    if "PRIVATE KEY" in line:
        raise GuestError("this is a private key: give the public key (the .pub file)", "")
    if "\n" in line or "\r" in line:
        raise GuestError("give exactly one SSH public key", line.count("\n") + 1)
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise GuestError("not an OpenSSH public key: expected '<type> <base64> [comment]'",
                         line[:60])
    kind, b64 = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind not in KEY_TYPES:
        raise GuestError(f"unsupported SSH key type (use one of {', '.join(KEY_TYPES)})",
                         kind[:60])
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise GuestError("SSH key is not valid base64", b64[:60]) from None
    r = _Reader(blob)
    if r.string() != kind.encode():
        raise GuestError("SSH key blob names another key type than its line", kind)
    if kind == "ssh-ed25519":
        if len(r.string()) != 32:
            raise GuestError("ssh-ed25519 key must be 32 bytes", kind)
    elif kind == "ssh-rsa":
        e, n = r.string(), r.string()
        bits = int.from_bytes(n, "big").bit_length()
        if not e or int.from_bytes(e, "big") < 3 or bits < MIN_RSA_BITS:
            raise GuestError(f"ssh-rsa key must have at least {MIN_RSA_BITS} bits", bits)
    else:
        curve, size = _ECDSA[kind]
        if r.string() != curve.encode():
            raise GuestError(f"{kind} key names another curve", kind)
        point = r.string()
        if len(point) != 1 + 2 * size or point[0] != 4:
            raise GuestError(f"{kind} key point is not an uncompressed {curve} point",
                             len(point))
    r.end()
    if not _COMMENT.fullmatch(comment) or '"' in comment or "\\" in comment:
        comment = ""
    return SshKey(kind, blob, comment)


def hostname_of(name: str) -> str:
    """A domain name as a host name (RFC 1123 label)."""
    label = re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-")
    return label or "p2pm-guest"


def seed_files(name: str, key: SshKey) -> dict[str, bytes]:
    """The NoCloud seed's files (``meta-data``, ``user-data``) for domain ``name``."""
    digest = hashlib.sha256(key.line.encode()).hexdigest()[:8]
    host = hostname_of(name)
    meta = f"instance-id: {host}-{digest}\nlocal-hostname: {host}\n"
    user = ("#cloud-config\n"
            "disable_root: false\n"
            "ssh_pwauth: false\n"
            "ssh_authorized_keys:\n"
            f'  - "{key.line}"\n')
    return {"meta-data": meta.encode(), "user-data": user.encode()}


def image_format(head: bytes) -> str:
    """``qcow2`` or ``raw`` from an image's first bytes (:data:`HEAD_BYTES`).

    A qcow2 image with a backing file is refused (it would make qemu open a
    host file the buyer names), as are other hypervisors' formats (convert them).
    """
    if head[:4] == QCOW2_MAGIC:
        if len(head) < 16:
            raise GuestError("qcow2 header is truncated", len(head))
        if int.from_bytes(head[8:16], "big") != 0:
            raise GuestError("qcow2 images with a backing file are refused", "backing file")
        return "qcow2"
    for offset, magic, fmt in _FOREIGN:
        if head[offset:offset + len(magic)] == magic:
            raise GuestError(f"{fmt} images are not supported: convert to qcow2 or raw", fmt)
    return "raw"


def is_boot_sector(head: bytes) -> bool:
    """True when a raw image starts with an MBR (or GPT's protective MBR) signature."""
    return len(head) >= 512 and head[510:512] == b"\x55\xaa"
