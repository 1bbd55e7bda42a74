"""What ``p2pmarket audit status [HOST]`` and ``p2pmarket audit verify PROOF_FILE`` need.

- :func:`control_handlers` gives the node's control API call ``audit_status {host?:
  hex key or node id}`` -> the witness's :meth:`WitnessService.status`, plus
  ``audit_exposed {}`` -> ``{exposed: [node id]}``;
- :func:`verify_file` checks a proof file offline (raw proof bytes, or their hex)
  and returns its summary; :func:`status_lines` and :func:`proof_lines` format
  results for the terminal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pmarket.audit.evidence import EvidenceError, verify_proof
from p2pmarket.audit.witness import WitnessService
from p2pmarket.core.clock import now_us

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _host_arg(value: Any) -> bytes | None:
    if value in (None, ""):
        return None
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise EvidenceError("host must be a hex public key or node id") from None
    if len(raw) not in (20, 32):
        raise EvidenceError("host must be a hex public key (32 bytes) or node id (20)")
    return raw


def control_handlers(service: WitnessService) -> dict[str, ControlHandler]:
    async def status(args: dict[str, Any]) -> dict[str, Any]:
        return service.status(_host_arg(args.get("host")))

    async def exposed(args: dict[str, Any]) -> dict[str, Any]:
        return {"exposed": service.evidence.exposed()}

    return {"audit_status": status, "audit_exposed": exposed}


def verify_file(path: Path | str, host: str | None = None) -> dict[str, Any]:
    """Verify the proof in ``path`` offline; raise :class:`EvidenceError` if invalid."""
    data = Path(path).read_bytes()
    text = data.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        data = bytes.fromhex(text.decode())
    return verify_proof(data, _host_arg(host)).summary()


def proof_lines(summary: dict[str, Any]) -> list[str]:
    return [f"valid proof of {summary['type']} against host {_hex(summary['host_id'])}",
            f"  host key {_hex(summary['host'])}",
            f"  at log seq {summary['seq']}: {summary['rule']}",
            f"  proof id {_hex(summary['id'])}, {summary['bytes']} bytes"]


def status_lines(doc: dict[str, Any]) -> list[str]:
    hosts = doc.get("hosts", [])
    if not hosts:
        return ["this node witnesses no host yet"]
    out = []
    for h in hosts:
        line = f"{_hex(h.get('host_id', b''))[:16]}  {h['state']:<9}"
        if "audited_seq" in h:
            line += f"  audited to seq {h['audited_seq']}, {h['held']} authenticators held"
        if h.get("last_audit"):
            ago = max(0, now_us() - int(h["last_audit"])) // 1_000_000
            line += f", last audit {ago}s ago"
        out.append(line)
        if h.get("challenge"):
            c = h["challenge"]
            out.append(f"    open challenge: log up to seq {c['target']} "
                       f"({c['attempts']} unanswered)")
        if h.get("error"):
            out.append(f"    {h['error']}")
        for p in h.get("proofs", []):
            out.append(f"    proof {_hex(p['id'])}: {p['type']} at seq {p['seq']}: "
                       f"{p['rule']}")
    return out


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


__all__ = ["control_handlers", "proof_lines", "status_lines", "verify_file"]
