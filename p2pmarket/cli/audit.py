"""``p2pmarket audit status [HOST]`` and ``p2pmarket audit verify PROOF_FILE``.

- ``status`` asks your own node (``--data-dir``, its ``audit_status`` control call)
  or HOST's witnesses in the DHT (``witness.status``) what they know;
- ``verify`` checks a proof file offline (:func:`verify_file`: raw proof bytes, or
  their hex; with ``--genesis``, also the proofs about notary certificates); a SHARP
  conflict proof (section 10) is shown with the agent, what it held and promised;

:func:`status_lines` and :func:`proof_lines` format the results for the terminal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.api.control import ControlClient
from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.witness import WITNESSES_PER_HOST, witnesses_of
from p2pmarket.cli.options import (
    Subcommands,
    genesis_of,
    genesis_opt,
    json_opt,
    net_of,
    wallet_opt,
)
from p2pmarket.cli.terminal import dump, out
from p2pmarket.client.discovery import MarketView
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import DataDir, load_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import NODE_ID_SIZE, Identity, node_id_of, parse_key_or_node_id
from p2pmarket.core.wire import unpack
from p2pmarket.sharp.proof import CONFLICT, verify_conflict

EXAMPLES = """examples:
  p2pmarket audit status --data-dir run/testnet/node2
  p2pmarket audit status 3f9a…(host key or node id) --wallet run/demo/wallet
  p2pmarket audit verify proof.bin --host 3f9a…
  p2pmarket audit verify proof.bin --genesis run/testnet/genesis.json"""


def add_audit(sub: Subcommands) -> None:
    au = sub.add("audit", "PeerReview: what witnesses know about hosts; check a proof offline.",
                 EXAMPLES)
    actions = Subcommands(au, "action", "ACTION")
    st = actions.add("status", "witness states (trusted, suspected, exposed): from your own "
                     "node (--data-dir), or from HOST's witnesses in the DHT", EXAMPLES,
                     audit_status)
    st.add_argument("host", nargs="?", help="host public key or node id (hex)")
    st.add_argument("--data-dir", type=Path, help="ask this running node (a witness)")
    wallet_opt(st)
    genesis_opt(st)
    json_opt(st)
    ve = actions.add("verify", "check a proof of misbehaviour offline", EXAMPLES, audit_verify)
    ve.add_argument("proof_file", type=Path, help="the proof: raw bytes or hex")
    ve.add_argument("--host", help="the host it must be against (hex key or node id)")
    ve.add_argument("--genesis", type=Path, help="the network's genesis file: needed for "
                    "proofs about notary certificates (refund payments)")
    json_opt(ve)


async def audit_status(args: argparse.Namespace) -> int:
    """Ask your own node (a witness) or HOST's witnesses in the DHT."""
    if args.data_dir is not None:
        doc = await ControlClient(DataDir(args.data_dir)).call(
            "audit_status", {"host": args.host} if args.host else {})
        docs = [("this node", doc)]
    else:
        if not args.host:
            raise P2PMarketError("name a HOST, or ask your own node with --data-dir")
        host = parse_key_or_node_id(args.host)
        host_id = host if len(host) == NODE_ID_SIZE else node_id_of(host)
        docs = []
        async with MarketView(genesis_of(args), net_of(args)) as market, PeerClient(
                Identity.generate(), timeout_s=5, proxy=net_of(args).proxy) as client:
            for peer in await witnesses_of(market.directory(), host_id, WITNESSES_PER_HOST):
                try:
                    docs.append((peer.url, await client.call(
                        peer.url, peer.key, "witness.status", {"host": host_id})))
                except P2PMarketError as exc:
                    docs.append((peer.url, {"hosts": [], "error": exc.message}))
    if args.json:
        dump({"witnesses": [{"witness": w, **d} for w, d in docs]})
        return 0
    for witness, doc in docs:
        out.print(f"[bold]{witness}[/bold]" + (f": {doc['error']}" if "error" in doc else ""))
        for line in status_lines(doc):
            out.print("  " + line)
    return 0


async def audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 for a valid proof, 1 (one error) for an invalid one."""
    try:
        summary = verify_file(args.proof_file, args.host,
                              load_genesis(args.genesis) if args.genesis else None)
    except FileNotFoundError:
        raise P2PMarketError(f"no proof file at {args.proof_file}") from None
    if args.json:
        dump(summary)
    else:
        for line in proof_lines(summary):
            out.print(line)
    return 0


def verify_file(path: Path | str, host: str | None = None, genesis: Genesis | None = None
                ) -> dict[str, Any]:
    """Verify the proof in ``path`` offline (under ``genesis`` if given); raise
    :class:`EvidenceError` if invalid."""
    data = Path(path).read_bytes()
    text = data.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        data = bytes.fromhex(text.decode())
    summary = verify_proof(data, parse_key_or_node_id(host) if host else None,
                           genesis).summary()
    if summary["type"] == CONFLICT:
        summary["conflict"] = verify_conflict(unpack(data)).to_doc()
    return summary


def proof_lines(summary: dict[str, Any]) -> list[str]:
    if summary["type"] == CONFLICT:
        c = summary["conflict"]
        return [f"valid proof that agent {_hex(c['agent_id'])} promised the same "
                "resources twice",
                f"  agent key {_hex(c['agent'])}",
                f"  it held {c['held']} of {c['resource']} at site {_hex(c['site_id'])} "
                f"(claim {_hex(c['parent'])})",
                f"  and signed {len(c['claims'])} subclaims holding {c['promised']} at "
                f"{c['at']} µs",
                f"  proof id {_hex(summary['id'])}, {summary['bytes']} bytes"]
    return [f"valid proof of {summary['type']} against host {_hex(summary['host_id'])}",
            f"  host key {_hex(summary['host'])}",
            f"  at log seq {summary['seq']}: {summary['rule']}",
            f"  proof id {_hex(summary['id'])}, {summary['bytes']} bytes"]


def status_lines(doc: dict[str, Any]) -> list[str]:
    hosts = doc.get("hosts", [])
    if not hosts:
        return ["this node witnesses no host yet"]
    lines = []
    for h in hosts:
        line = f"{_hex(h.get('host_id', b''))[:16]}  {h['state']:<9}"
        if "audited_seq" in h:
            line += f"  audited to seq {h['audited_seq']}, {h['held']} authenticators held"
        if h.get("last_audit"):
            ago = max(0, now_us() - int(h["last_audit"])) // 1_000_000
            line += f", last audit {ago}s ago"
        lines.append(line)
        if h.get("challenge"):
            c = h["challenge"]
            lines.append(f"    open challenge: log up to seq {c['target']} "
                         f"({c['attempts']} unanswered)")
        if h.get("error"):
            lines.append(f"    {h['error']}")
        for p in h.get("proofs", []):
            lines.append(f"    proof {_hex(p['id'])}: {p['type']} at seq {p['seq']}: "
                         f"{p['rule']}")
    return lines


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)
