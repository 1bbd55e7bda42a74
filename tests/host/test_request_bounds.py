"""The request bounds leave room for the largest legitimate requests (issue 10, item 5):
a payment certified by the largest committee a certificate may name, a bid on 64
unique resources, a full witness push, a wallet's catch-up batch."""

from __future__ import annotations

import os

from p2pmarket.api.bounds import DEFAULT_REQUEST_BYTES
from p2pmarket.api.rpc import make_request
from p2pmarket.auction.rpcargs import REQUEST_LIMITS
from p2pmarket.audit.watched import MAX_PUSH
from p2pmarket.audit.witness import REQUEST_LIMITS as WITNESS_LIMITS
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import MAX_NOTARY_SIGS, Certificate
from p2pmarket.ledger.chain import MAX_MEMO, RECV, SEND, Authenticator, Entry, recv_body
from p2pmarket.ledger.committee import MAX_BATCH
from p2pmarket.ledger.notaryrpc import REQUEST_LIMITS as NOTARY_LIMITS
from p2pmarket.sharp.claims import MAX_CLAIMS, Rset, Term, Ticket, anchor
from p2pmarket.sharp.tree import MAX_BUNDLE

BUYER, HOST = Identity(b"\x21" * 32), Identity(b"\x22" * 32)
# each bound is at least four times the largest legitimate request (today: a payment
# with 128 notary signatures ~16 KiB, a 64-range bid ~3 KiB, a push ~28 KiB, a
# 512-item batch ~0.9 MiB)
MARGIN = 4


def send_cert(payer: Identity, to: bytes, signers: int, seq: int = 7) -> Certificate:
    entry = Entry(payer.public_key, seq, os.urandom(32), SEND,
                  {"to": to, "amount": 2**62, "memo": "m" * MAX_MEMO}, 2**62)
    sig = Authenticator.sign(payer, entry).sig
    return Certificate(entry, sig, tuple((os.urandom(32), os.urandom(64))
                                         for _ in range(signers)))


def longest_ticket() -> Ticket:
    """A ticket of the most claims, each with the largest fields."""
    keys = [Identity(bytes([i]) * 32) for i in range(1, MAX_CLAIMS + 2)]
    rset, term = Rset("net_out", 2**61), Term(2**61, 2**61 + 10**12)
    t = anchor(keys[0], keys[1].public_key, rset, term, b"s" * 32)
    for i in range(1, MAX_CLAIMS):
        t = t.delegate(keys[i], keys[i + 1].public_key, rset, term, b"s" * 32)
    return t


def size(name: str, args: dict[str, object]) -> int:
    return len(make_request(BUYER, HOST.node_id, name, args))


def test_host_requests_fit_their_bounds_with_margin() -> None:
    cert = send_cert(BUYER, HOST.public_key, MAX_NOTARY_SIGS).to_wire()
    bids = {f"tcp_port,{30000 + 100 * i}-{30099 + 100 * i}": "1000000,1000000000,1"
            for i in range(64)}
    largest = {
        "create_account": {"payment": cert, "bids": bids, "interval_s": 10**8,
                           "contingency": "0.333333"},
        "fund": {"account_id": "a" * 64, "payment": cert},
        "bid": {"account_id": "a" * 64, "bids": bids, "interval_s": 10**8,
                "contingency": "0.333333", "replace": True},
        "refund": {"account_id": "a" * 64, "amount": 2**62, "close": True,
                   "refund_id": "r" * 64},
        "lease": {"account_id": "a" * 64},
        "status": {},
        "audit_log": {"since": 2**62, "limit": 2**64 - 1},
        "redeem": {"tickets": [longest_ticket().to_wire()] * MAX_BUNDLE},
        "buy_anchor": {"payment": cert, "rset": {"type": "net_out", "count": 2**61,
                                                 "ident": None}, "term": [2**61, 2**62]},
    }
    assert set(largest) == set(REQUEST_LIMITS)
    for name, args in largest.items():
        assert MARGIN * size(f"host.{name}", args) <= REQUEST_LIMITS[name], name


def test_witness_and_notary_requests_fit_their_bounds_with_margin() -> None:
    auths = [[2**62, os.urandom(32), os.urandom(64)] for _ in range(MAX_PUSH)]
    push = {"host": HOST.public_key, "auths": auths, "url": "u" * 256}
    assert MARGIN * size("witness.push", push) <= WITNESS_LIMITS["push"]
    certify = {"entry": send_cert(BUYER, HOST.public_key, 0).entry.to_wire(),
               "sig": os.urandom(64),
               "send": send_cert(HOST, BUYER.public_key, MAX_NOTARY_SIGS).encode()}
    assert MARGIN * size("notary.certify", certify) <= DEFAULT_REQUEST_BYTES
    # a wallet's batch: RECVs, each with the SEND it receives certified by a quorum of a
    # ten-notary committee, the last one with its own quorum certificate
    entries, sigs, certs, sends = [], [], [], []
    for i in range(MAX_BATCH):
        send = send_cert(HOST, BUYER.public_key, 7, seq=i + 1)
        entry = Entry(BUYER.public_key, i + 1, os.urandom(32), RECV, recv_body(send.entry), 2**62)
        entries.append(entry.encode())
        sigs.append(os.urandom(64))
        certs.append([[os.urandom(32), os.urandom(64)] for _ in range(7)]
                     if i == MAX_BATCH - 1 else [])
        sends.append(send.encode())
    batch = {"entries": entries, "sigs": sigs, "certs": certs, "sends": sends}
    assert MARGIN * size("notary.certify_batch", batch) <= NOTARY_LIMITS["certify_batch"]
