"""Disk images: ``p2pmarket upload LEASE IMAGE`` and the image step of ``buy --image``.

IMAGE is a FILE (an existing path: checked and hashed here, then streamed to the
host, never whole in memory) or the NAME of a base image the host offers (``hosts``
lists them; the host copies it into the account's disk). ``--json`` prints, per
lease, ``{lease_id, host (node id, hex), ok, detail, volume?, format?, capacity_kib?}``
(``upload``: one such object; ``buy``: a list under ``images``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from p2pmarket.auction.resources import parse_bids
from p2pmarket.cli.options import Subcommands, json_opt, net_of, wallet_dir, wallet_opt
from p2pmarket.cli.terminal import animated, dump, err, out
from p2pmarket.client.imageupload import (
    ImageOutcome,
    LocalImage,
    UploadProgress,
    check_disk_bid,
    image_source,
    install_image,
)

UPLOAD_EXAMPLES = """examples:
  p2pmarket upload 3f2a9c0d1e4b5a69 debian.qcow2      # stream a file to the lease's host
  p2pmarket upload 3f2a9c0d1e4b5a69 debian-12         # the host's own base image

qcow2 (no backing file) and raw images (with a partition table, a file system or an
ISO 9660 volume) are taken; both the file and the size the guest sees must fit the
lease's disk. The exit code is 1 if the image did not go in."""


def add_upload(sub: Subcommands) -> None:
    up = sub.add("upload", "Put a disk image (a file, or a host's base image by name) "
                           "into a lease's disk.", UPLOAD_EXAMPLES, upload_cmd)
    wallet_opt(up)
    up.add_argument("lease", metavar="LEASE", help="the lease id (see `p2pmarket leases`)")
    up.add_argument("image", metavar="IMAGE", help="an image file, or a base image's name")
    json_opt(up)


def prepare_image(text: str, bid_texts: list[str]) -> LocalImage | str:
    """``buy --image``'s source, checked before anything is paid: a file must be a disk
    image and fit an absolute disk minimum; a name picks hosts offering it."""
    source = image_source(text)
    if isinstance(source, LocalImage):
        check_disk_bid(parse_bids(bid_texts), source)
    return source


@contextmanager
def progress_shown(json_out: bool) -> Iterator[UploadProgress]:
    """A progress callback: a spinner line on a terminal, nothing otherwise."""
    if not animated(json_out):
        yield lambda _s, _t: None
        return
    with out.status("uploading…") as spinner:
        def show(sent: int, total: int) -> None:
            spinner.update(f"uploading: {100 * sent // max(1, total)}% "
                           f"({sent >> 20} of {total >> 20} MiB)")
        yield show


def outcome_doc(o: ImageOutcome) -> dict[str, Any]:
    doc: dict[str, Any] = {"lease_id": o.lease_id, "host": o.host_id, "ok": o.ok,
                           "detail": o.detail}
    for key in ("volume", "format", "capacity_kib"):
        if key in o.result:
            doc[key] = o.result[key]
    return doc


def print_outcomes(outcomes: list[ImageOutcome], kept: bool = True) -> int:
    """One line per lease (an ``error:`` line for each failure); returns the failures.
    ``kept``: a failed lease is kept (else ``buy`` gives it back, cli/giveback.py)."""
    for o in outcomes:
        if o.ok:
            out.print(f"image: lease {o.lease_id}: {o.detail}")
        else:
            then = (f"the lease is kept (`p2pmarket upload {o.lease_id} IMAGE` tries again)"
                    if kept else "the lease is given back")
            err.print(f"error: the image did not go into lease {o.lease_id} (host "
                      f"{o.host_id[:16]}…): {o.detail}; {then}", soft_wrap=True)
    return sum(1 for o in outcomes if not o.ok)


async def install_step(args: argparse.Namespace, lease_ids: list[str],
                       source: LocalImage | str) -> list[ImageOutcome]:
    with progress_shown(args.json) as progress:
        return await install_image(wallet_dir(args), lease_ids, source, progress,
                                   net_of(args))


async def upload_cmd(args: argparse.Namespace) -> int:
    source = image_source(args.image)
    outcomes = await install_step(args, [args.lease], source)
    if args.json:
        dump(outcome_doc(outcomes[0]))
        return 0 if outcomes[0].ok else 1
    return print_outcomes(outcomes)
