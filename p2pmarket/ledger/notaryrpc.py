"""The notary's RPC handlers (registered by the node under the prefix ``notary``).

:func:`handlers` wraps a :class:`p2pmarket.ledger.notary.NotaryService`: it
parses the arguments into :class:`p2pmarket.ledger.notarystate.Item` records
and runs them in the service's group commit.

Arguments are checked strictly (exact fields, sizes, counts) before anything
runs: a malformed request is refused whole and changes nothing. Entries and
certificates in batches travel as their canonical msgpack bytes (what their
hashes cover), which keeps the envelope small and cheap to sign and check.

- ``certify`` ``{entry: map, sig, send?: bytes}`` → ``{notary, sig}``; a refusal
  is an error. ``send``: for a RECV, the SEND certificate it receives (encoded).
- ``certify_batch`` ``{entries: [bytes], sigs: [bytes], certs: [[[key, sig], ...]],
  sends?: [bytes | None]}``: ``sigs[i]`` is item i's owner proof (its signature, or a
  batch root's with its Merkle path: a malformed one refuses the whole request); the
  notary's signature of a batch root is returned for each of its items once every
  entry under it is certified here (until then: the error value has
  ``root_incomplete``) → ``{notary, sigs: [bytes | None], errors: [[index,
  message, value], ...]}``. Items are certified in order; ``certs[i]`` is empty or
  the notary signatures of a quorum certificate for item i (catch-up: it also
  covers the items before it that link to it); ``sends[i]`` the SEND certificate
  a fresh RECV at item i receives (None for other items). A refused item leaves
  later items of the same chain refused too (they no longer follow its head).
- ``deliver`` ``{certs: [bytes]}`` → ``{notary, accepted, errors}``: SEND
  certificates for the inbox of their payees.
- ``inbox`` ``{owner}`` → ``{certs: [map], more}``.
- ``head`` ``{owner}`` → ``{owner, seq, hash, balance}``.
- ``supply`` ``{}`` → ``{minted, balances, pending, early, ok, chains, entries, delivered}``.
- ``evidence`` ``{owner}`` → ``{proofs: [{certified: auth, other: auth}]}``.
"""

from __future__ import annotations

from typing import Any

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from p2pmarket.ledger.certificate import MAX_NOTARY_SIGS, Certificate
from p2pmarket.ledger.chain import Entry
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_map
from p2pmarket.ledger.merkle import OwnerProof
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.notarystate import Item

MAX_BATCH = 1024
MAX_INBOX = 256
# request bounds for the RPC layer (register_all(..., limits=REQUEST_LIMITS)); the
# others take its default (64 KiB: a certify with its SEND certificate is a few KiB)
BATCH_REQUEST_BYTES = 4 * 1024 * 1024   # up to MAX_BATCH entries with certificates
REQUEST_LIMITS = {"certify_batch": BATCH_REQUEST_BYTES, "deliver": BATCH_REQUEST_BYTES}


def _list(value: Any, name: str, max_len: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_len:
        raise LedgerError(f"{name} must be a list of at most {max_len}", name)
    return value


def parse_sigs(value: Any) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for pair in _list(value, "certs", MAX_NOTARY_SIGS):
        if not isinstance(pair, list) or len(pair) != 2:
            raise LedgerError("notary signature must be a [key, sig] pair", "certs")
        pairs.append((check_bytes(pair[0], "notary key", PUBLIC_KEY_SIZE),
                      check_bytes(pair[1], "notary sig", SIGNATURE_SIZE)))
    return tuple(pairs)


def check_proof(value: Any) -> bytes:
    """An owner's signature or batch proof (:class:`~p2pmarket.ledger.merkle.OwnerProof`):
    its shape checked here (index, size, path length), the signature by the notary."""
    OwnerProof.decode(value)
    assert isinstance(value, bytes)
    return value


def _fields(args: Any, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    """``args`` as a map with the ``required`` fields and any of the ``optional`` ones."""
    if isinstance(args, dict):
        present = set(args) & optional
        return check_map(args, what, required | present)
    return check_map(args, what, required)


def _send(value: Any) -> Certificate | None:
    if value is None:
        return None
    return Certificate.decode(value) if isinstance(value, bytes) else \
        Certificate.from_wire(value)


def _errors(results: list[Any]) -> list[list[Any]]:
    return [[i, r.message, r.value] for i, r in enumerate(results)
            if isinstance(r, LedgerError)]


def handlers(service: NotaryService) -> dict[str, Handler]:
    """The notary RPCs of ``service``, by name (see the module doc)."""

    async def certify(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = _fields(args, "certify arguments", {"entry", "sig"}, {"send"})
        entry = Entry.from_wire(args["entry"])
        sig = check_proof(args["sig"])
        send = _send(args.get("send"))
        await service.screen({entry.owner})
        [result] = await service.group.run(
            service.certify_grouped([Item(entry, sig, send=send)]))
        if isinstance(result, LedgerError):
            raise result
        return {"notary": service.key, "sig": result}

    async def certify_batch(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = _fields(args, "certify_batch arguments", {"entries", "sigs", "certs"},
                       {"sends"})
        entries = _list(args["entries"], "entries", MAX_BATCH)
        sigs = _list(args["sigs"], "sigs", MAX_BATCH)
        certs = _list(args["certs"], "certs", MAX_BATCH)
        sends = _list(args.get("sends", [None] * len(entries)), "sends", MAX_BATCH)
        if not entries or not len(entries) == len(sigs) == len(certs) == len(sends):
            raise LedgerError("entries, sigs, certs and sends must be non-empty and match",
                              {"entries": len(entries), "sigs": len(sigs), "certs": len(certs),
                               "sends": len(sends)})
        items = []
        for data, sig, cert, send in zip(entries, sigs, certs, sends, strict=True):
            if not isinstance(data, bytes):
                raise LedgerError("entries must be canonical msgpack bytes", "entries")
            items.append(Item(Entry.decode(data), check_proof(sig),
                              parse_sigs(cert), _send(send)))
        await service.screen({item.entry.owner for item in items})
        results = await service.group.run(service.certify_grouped(items))
        return {"notary": service.key,
                "sigs": [r if isinstance(r, bytes) else None for r in results],
                "errors": _errors(results)}

    async def deliver(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = check_map(args, "deliver arguments", {"certs"})
        docs = _list(args["certs"], "certs", MAX_BATCH)
        certs = [Certificate.decode(d) for d in docs]
        results = await service.group.run(service.deliver_grouped(certs))
        return {"notary": service.key, "accepted": sum(1 for r in results if r is None),
                "errors": _errors(results)}

    async def inbox(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = check_map(args, "inbox arguments", {"owner"})
        owner = check_bytes(args["owner"], "owner", PUBLIC_KEY_SIZE)
        certs = service.inbox(owner, MAX_INBOX + 1)
        return {"certs": [c.to_wire() for c in certs[:MAX_INBOX]],
                "more": len(certs) > MAX_INBOX}

    async def head(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = check_map(args, "head arguments", {"owner"})
        return service.head(check_bytes(args["owner"], "owner", PUBLIC_KEY_SIZE))

    async def supply(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        check_map(args, "supply arguments", set())
        return service.supply()

    async def evidence(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        args = check_map(args, "evidence arguments", {"owner"})
        owner = check_bytes(args["owner"], "owner", PUBLIC_KEY_SIZE)
        return {"proofs": [{"certified": a.to_wire(), "other": b.to_wire()}
                           for a, b in service.evidence(owner)]}

    return {"certify": certify, "certify_batch": certify_batch, "deliver": deliver,
            "inbox": inbox, "head": head, "supply": supply, "evidence": evidence}
