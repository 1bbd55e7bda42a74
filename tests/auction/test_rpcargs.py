"""The buyers' RPC arguments parsed once into their records, or refused with the
first problem in a fixed order."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.resources import bids_from_wire
from p2pmarket.auction.rpcargs import (
    BidArgs,
    CreateAccountArgs,
    FundArgs,
    LeaseArgs,
    RefundArgs,
    parse_args,
)

S = 1_000_000


def test_each_rpc_has_its_record() -> None:
    bids = {"cpu": "1,0.1,1"}
    assert parse_args("create_account", {"payment": {"id": 1}, "bids": bids,
                                         "interval_s": 60, "contingency": "0.25"}) == \
        CreateAccountArgs({"id": 1}, bids_from_wire(bids), 60 * S, 250_000)
    assert parse_args("bid", {"account_id": "a", "bids": bids}) == \
        BidArgs("a", bids_from_wire(bids), None, None, False)
    assert parse_args("bid", {"account_id": "a", "bids": {}, "interval_s": 5,
                              "contingency": 10, "replace": True}) == \
        BidArgs("a", {}, 5 * S, 10, True)
    assert parse_args("fund", {"account_id": "a", "payment": {}}) == FundArgs("a", {})
    assert parse_args("refund", {"account_id": "a", "close": True}) == \
        RefundArgs("a", None, True, None)
    assert parse_args("refund", {"account_id": "a", "amount": 5, "refund_id": "r-1"}) == \
        RefundArgs("a", 5, False, "r-1")
    assert parse_args("refund", {"account_id": "a", "amount": 5, "refund_id": ""}) == \
        RefundArgs("a", 5, False, None)
    assert parse_args("lease", {"account_id": "a"}) == LeaseArgs("a")


@pytest.mark.parametrize(("name", "args", "message", "value"), [
    # the argument set is checked first, then each argument in a fixed order
    ("create_account", {"bids": 1, "interval_s": 0}, "missing argument 'payment'",
     ["payment"]),
    ("create_account", {"payment": 1, "bids": 1, "interval_s": 0},
     "interval_s must be an integer from 1 to 315360000", "0"),
    ("create_account", {"payment": 1, "bids": 1, "interval_s": 1, "contingency": True},
     "contingency must be a ratio from 0 to 1", "True"),
    ("create_account", {"payment": 1, "bids": 1, "interval_s": 1},
     "payment must be a certificate map", "int"),
    ("bid", {"account_id": "", "bids": 1}, "account_id must be a short string", "''"),
    ("bid", {"account_id": "a", "bids": {}, "interval_s": 2.5},
     "interval_s must be an integer from 1 to 315360000", "2.5"),
    ("refund", {"account_id": "a", "close": 1}, "close must be true or false", "1"),
    ("refund", {"account_id": "a", "amount": -1}, "amount must be a positive integer "
     "(micro-credits)", "-1"),
    ("fund", {"account_id": "a", "payment": [], "x": 1}, "unknown argument 'x'", ["x"]),
    ("lease", "unencodable", "arguments must not contain floats", "unencodable"),
    ("lease", None, "RPC arguments must be a map", "NoneType"),
])
def test_refused(name: str, args: Any, message: str, value: Any) -> None:
    with pytest.raises(HostError) as err:
        parse_args(name, args)
    assert (err.value.message, err.value.value) == (message, value)
