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

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from p2pmarket.auction import HostError
from p2pmarket.core import sshkey
from p2pmarket.core.sshkey import SshKey

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


class _BootSettings(Protocol):
    @property
    def guest_kernel(self) -> str: ...
    @property
    def guest_initrd(self) -> str: ...
    @property
    def guest_cmdline(self) -> str: ...


def guest_boot(settings: _BootSettings) -> GuestBoot | None:
    """The host's own kernel boot for guests without an image, from a node's settings
    (``guest_kernel``, ``guest_initrd``, ``guest_cmdline``); None without a kernel."""
    if not settings.guest_kernel:
        return None
    return GuestBoot(settings.guest_kernel, settings.guest_initrd or None,
                     settings.guest_cmdline or None)


def parse_ssh_key(text: str) -> SshKey:
    """Check one OpenSSH public key line (:func:`p2pmarket.core.sshkey.parse_ssh_key`:
    the rules are the buyer's too); a bad one is a :class:`GuestError`."""
    try:
        return sshkey.parse_ssh_key(text)
    except sshkey.SshKeyError as exc:
        raise GuestError(exc.message, exc.value) from None


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
