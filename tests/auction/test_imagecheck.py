"""The image check, pure: formats recognised, refusals named, sizes fitted."""

from __future__ import annotations

import struct

import pytest

from p2pmarket.auction.imagecheck import (
    HEAD_BYTES,
    ImageError,
    blank_qcow2,
    check_fits,
    inspect_image,
)

MIB = 1024 * 1024


def at(offset: int, sig: bytes, n: int = HEAD_BYTES) -> bytes:
    data = bytearray(n)
    data[offset:offset + len(sig)] = sig
    data[7] = 1   # not all zeros
    return bytes(data)


@pytest.mark.parametrize(("head", "kind"), [
    (at(510, b"\x55\xaa"), "mbr"), (at(512, b"EFI PART"), "gpt"),
    (at(32769, b"CD001"), "iso9660"), (at(1080, b"\x53\xef"), "ext"),
    (at(0, b"XFSB"), "xfs"), (at(65600, b"_BHRfS_M"), "btrfs"),
    (bytes(HEAD_BYTES), "blank"),
])
def test_raw_images_are_recognised_by_their_marks(head: bytes, kind: str) -> None:
    info = inspect_image(head, 10 * MIB)
    assert (info.format, info.kind, info.virtual_size) == ("raw", kind, 10 * MIB)


def test_a_qcow2_gives_its_virtual_size_and_v2_is_taken() -> None:
    img = blank_qcow2(3 * 1024 * MIB)
    assert inspect_image(img, len(img)).virtual_size == 3 * 1024 * MIB
    v2 = bytearray(img[:72])
    struct.pack_into(">I", v2, 4, 2)
    assert inspect_image(bytes(v2) + bytes(1000), 1072).format == "qcow2"


def qcow(**fields: int) -> bytes:
    img = bytearray(blank_qcow2(MIB))
    offsets = {"version": (4, ">I"), "cluster_bits": (20, ">I"), "crypt": (32, ">I"),
               "size": (24, ">Q"), "incompatible": (72, ">Q"), "length": (100, ">I")}
    for name, value in fields.items():
        off, fmt = offsets[name]
        struct.pack_into(fmt, img, off, value)
    return bytes(img)


def with_data_file_extension() -> bytes:
    img = bytearray(blank_qcow2(MIB))
    struct.pack_into(">II", img, 104, 0x44415441, 8)
    img[112:120] = b"/dev/sda"
    return bytes(img)


@pytest.mark.parametrize(("data", "message"), [
    (blank_qcow2(MIB, backing_file="/etc/shadow"), "backing file"),
    (qcow(version=4), "version 4"), (qcow(crypt=1), "encrypted"),
    (qcow(size=0), "virtual size is 0"), (qcow(cluster_bits=30), "cluster_bits"),
    (qcow(incompatible=4), "external data file"), (qcow(incompatible=2), "corrupt"),
    (qcow(incompatible=1 << 9), "unknown incompatible"), (qcow(length=50), "header length"),
    (with_data_file_extension(), "external data file"),
    (b"QFI\xfb\x00\x00", "truncated qcow2"),
    (b"", "empty"), (b"PK\x03\x04" + bytes(1000), "zip"),
    (at(257, b"ustar"), "tar"), (b"KDMV" + bytes(1000), "VMDK images are not taken"),
    (b"plain text\n" * 100, "text file"), (b"\xff\xfe" * 2000, "no partition table"),
])
def test_refusals_are_named(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        inspect_image(data, len(data))


def test_a_short_head_of_a_large_image_is_refused() -> None:
    with pytest.raises(ImageError, match="first bytes are missing"):
        inspect_image(bytes(1000), 10 * MIB)


def test_both_the_bytes_and_the_virtual_size_must_fit() -> None:
    img = blank_qcow2(64 * MIB)
    info = inspect_image(img, len(img))
    check_fits(info, len(img), 64 * 1024)
    with pytest.raises(ImageError, match="larger than the account's disk") as err:
        check_fits(info, len(img), 63 * 1024)
    assert err.value.value == {"size": len(img), "virtual_size": 64 * MIB, "disk_kib": 63 * 1024}
    raw = inspect_image(bytes(HEAD_BYTES), 8 * MIB)
    with pytest.raises(ImageError):
        check_fits(raw, 8 * MIB, 8 * 1024 - 1)
