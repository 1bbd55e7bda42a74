"""After the purchase: ``p2pmarket leases`` (each lease refreshed from its host: its
state, allocation now, spent, left, time left), ``p2pmarket cancel LEASE`` (the money
left comes back), ``p2pmarket topup LEASE AMOUNT`` and ``p2pmarket rebid LEASE BIDS``
(:mod:`p2pmarket.client.leases`). Exit code: the number of errors."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from p2pmarket.cli.buy import (
    LEASE_SCHEMA,
    allocation_text,
    credits_doc,
    lease_doc,
    parse_duration,
    when,
)
from p2pmarket.cli.options import Subcommands, json_opt, net_of, wallet_dir, wallet_opt
from p2pmarket.cli.terminal import animated, dump, err, out
from p2pmarket.client.buyer import open_wallet, resume_pending
from p2pmarket.client.leases import LeaseView, cancel, rebid, refresh_leases, topup
from p2pmarket.client.quoting import Progress
from p2pmarket.core.clock import now_us
from p2pmarket.core.money import format_credits, parse_credits

LEASES_EXAMPLES = f"""examples:
  p2pmarket leases
  p2pmarket leases --json

states: active, outbid (the host allocates nothing to it now), ended (its interval
is over, or its host holds the account no more), cancelled, unreachable (the host
did not answer: the stored copy is shown; an error each), unknown.
--json: {{leases: [{{lease_id, status, source ("current" or "stored copy (...)"),
          url, detail, paid, paid_credits, spent, spent_credits (null: unknown),
          left, left_credits, time_left_s, lease: LEASE or null,
          machine: {{state (defining, uploading, booting, running, stopped; "" unknown),
                    access (forwarded, or why not yet), ssh ("HOST:PORT" or "")}}}}]}}
{LEASE_SCHEMA}"""
CANCEL_EXAMPLES = """examples:
  p2pmarket cancel 3f9a0c…        # close the account: what is left comes back
  p2pmarket cancel 3f9a0c… --json

--json: {lease_id, refund_id, status ("done", "pending": the host has not paid it
yet), refunded, refunded_credits, balance, balance_credits (the wallet's after),
witnesses: [answers]}"""
TOPUP_EXAMPLES = """examples:
  p2pmarket topup 3f9a0c… 2.5     # pay 2.5 credits more into the lease's account

--json: {lease_id, paid, paid_credits, lease: LEASE}"""
REBID_EXAMPLES = """examples:
  p2pmarket rebid 3f9a0c… cpu:2,0.1,1 memory:1,256MiB,1GiB
  p2pmarket rebid 3f9a0c… --duration 2h memory:1,256MiB,512MiB

the bids replace the lease's bids (those not listed are dropped); nothing is paid.
--json: {lease_id, lease: LEASE}"""


def add_leases(sub: Subcommands) -> None:
    le = sub.add("leases", "Show this wallet's leases, refreshed from their hosts.",
                 LEASES_EXAMPLES, leases)
    wallet_opt(le)
    json_opt(le)


def add_lease_money(sub: Subcommands) -> None:
    """``cancel``, ``topup`` and ``rebid``."""
    c = sub.add("cancel", "Close a lease's account: the money left comes back, certified.",
                CANCEL_EXAMPLES, cancel_cmd)
    c.add_argument("lease", metavar="LEASE", help="lease id (see `p2pmarket leases`)")
    wallet_opt(c)
    json_opt(c)
    t = sub.add("topup", "Pay more into a lease's account.", TOPUP_EXAMPLES, topup_cmd)
    t.add_argument("lease", metavar="LEASE", help="lease id")
    t.add_argument("amount", metavar="AMOUNT", help="credits (up to six decimals)")
    wallet_opt(t)
    json_opt(t)
    r = sub.add("rebid", "Change a lease's bids.", REBID_EXAMPLES, rebid_cmd)
    r.add_argument("lease", metavar="LEASE", help="lease id")
    r.add_argument("bids", nargs="+", metavar="BID", help="RESOURCE:WEIGHT,MIN,MAX")
    r.add_argument("--duration", default=None,
                   help="restart the interval with this length (30m, 2h, 1d)")
    wallet_opt(r)
    json_opt(r)


def time_left(view: LeaseView, now: int) -> int:
    """Whole seconds to the lease's end (0 once ended or cancelled)."""
    if view.lease is None or view.status in ("ended", "cancelled"):
        return 0
    return max(0, (view.lease.end - now) // 1_000_000)


def left_of(view: LeaseView) -> int:
    if view.lease is None or view.status in ("ended", "cancelled"):
        return 0
    return view.lease.balance


def duration_text(seconds: int) -> str:
    if seconds <= 0:
        return "-"
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"{d}d {h}h" if d else f"{h}h {m:02d}m" if h else f"{m}m {rest % 60:02d}s"


async def leases(args: argparse.Namespace) -> int:
    """Errors: pending purchases still not finished, hosts that did not answer, leases
    with no verifiable copy."""
    errors = 0
    for _, outcome in await resume_pending(wallet_dir(args), net=net_of(args)):
        err.print(f"earlier purchase: {outcome}")
        errors += outcome.startswith("still pending")
    now = now_us()
    views = await refresh_leases(wallet_dir(args), now, net_of(args))
    errors += sum(v.status in ("unreachable", "unknown") for v in views)
    if args.json:
        dump({"leases": [lease_json(v, now) for v in views]})
        return errors
    table = Table(title=f"{len(views)} lease(s)")
    for col in ("lease", "host", "state", "allocation now", "machine", "spent", "left",
                "time left", "ends"):
        table.add_column(col)
    for v in views:
        spent = v.spent
        table.add_row(v.lease_id, v.record["url"], v.status,
                      allocation_text(v.lease) if v.lease and v.status in
                      ("active", "outbid", "unreachable") else "",
                      machine_text(machine_of(v)),
                      "?" if spent is None else f"{format_credits(spent)} c",
                      f"{format_credits(left_of(v))} c",
                      duration_text(time_left(v, now)),
                      when(v.lease.end) if v.lease else "")
    out.print(table)
    for v in views:
        if v.status in ("unreachable", "unknown"):
            err.print(f"error: lease {v.lease_id} at {v.record['url']}: {v.detail} "
                      "(stored copy shown)")
    return errors


def machine_text(m: dict[str, Any]) -> str:
    state = m["state"] or "-"
    if m["ssh"]:
        return f"{state}\nssh {m['ssh']}"
    return f"{state}\n{m['access']}" if m["access"] else state


def lease_json(v: LeaseView, now: int) -> dict[str, Any]:
    spent = v.spent
    return {"lease_id": v.lease_id, "status": v.status, "url": v.record["url"],
            "source": "current" if v.fetched else f"stored copy ({v.detail or v.status})",
            "detail": v.detail, **credits_doc("paid", v.paid),
            "spent": spent, "spent_credits": None if spent is None else format_credits(spent),
            **credits_doc("left", left_of(v)), "time_left_s": time_left(v, now),
            "lease": lease_doc(v.lease) if v.lease else None, "machine": machine_of(v)}


def machine_of(v: LeaseView) -> dict[str, Any]:
    """What the host last said of the lease's machine: its state and the way in
    (``ssh``: ``HOST:PORT`` once a port is forwarded)."""
    r = v.record
    ssh = f"{r['ssh_host']}:{r['ssh_port']}" if r.get("ssh_host") and r.get("ssh_port") \
        else ""
    return {"state": r.get("vm_state", ""), "access": r.get("vm_access", ""), "ssh": ssh}


def progress_of(args: argparse.Namespace) -> Progress:
    return (lambda msg: err.print(msg)) if animated(args.json) else (lambda _: None)


async def cancel_cmd(args: argparse.Namespace) -> int:
    """One error if the host recorded the refund but has not paid it yet."""
    got = await cancel(wallet_dir(args), args.lease, progress_of(args), net_of(args))
    async with open_wallet(wallet_dir(args), net_of(args)) as (wallet, _):
        balance = wallet.balance()
    refunded = sum(int(c.entry.body["amount"]) for c in got.payments)
    errors = 0 if got.status == "done" else 1
    if args.json:
        dump({"lease_id": args.lease, "refund_id": got.refund_id, "status": got.status,
              **credits_doc("refunded", refunded), **credits_doc("balance", balance),
              "witnesses": got.witnesses})
        return errors
    out.print(f"cancelled lease {args.lease}: {format_credits(refunded)} credits refunded; "
              f"wallet balance {format_credits(balance)} credits")
    if errors:
        err.print(f"error: the host recorded a refund of {format_credits(got.amount)} "
                  f"credits ({got.status}) but has not paid it yet; it retries every tick")
    return errors


async def topup_cmd(args: argparse.Namespace) -> int:
    amount = parse_credits(args.amount)
    got = await topup(wallet_dir(args), args.lease, amount, progress_of(args), net_of(args))
    if args.json:
        dump({"lease_id": args.lease, **credits_doc("paid", got.paid),
              "lease": lease_doc(got.lease)})
        return 0
    out.print(f"topped up lease {args.lease} with {format_credits(amount)} credits: "
              f"balance {format_credits(got.lease.balance)} credits, "
              f"allocation {allocation_text(got.lease)}, ends {when(got.lease.end)}")
    return 0


async def rebid_cmd(args: argparse.Namespace) -> int:
    interval = parse_duration(args.duration) if args.duration else None
    got = await rebid(wallet_dir(args), args.lease, args.bids, interval, progress_of(args),
                      net_of(args))
    if args.json:
        dump({"lease_id": args.lease, "lease": lease_doc(got.lease)})
        return 0
    out.print(f"new bids on lease {args.lease}: allocation {allocation_text(got.lease)}, "
              f"ends {when(got.lease.end)}")
    return 0
