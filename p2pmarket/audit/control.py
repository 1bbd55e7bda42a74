"""The witness's control calls (wired by the node next to the host's).

Control API handlers (``POST /v1/<name>``, JSON in and out):

- ``audit_status {host?: hex key or node id}`` -> the witness's
  :meth:`~p2pmarket.audit.witness.WitnessService.status`
- ``audit_exposed {}`` -> ``{exposed: [node id]}``
"""

from __future__ import annotations

from typing import Any

from p2pmarket.api.server import ControlHandler
from p2pmarket.audit.witness import WitnessService
from p2pmarket.core.identity import parse_key_or_node_id


def control_handlers(service: WitnessService) -> dict[str, ControlHandler]:
    async def status(args: dict[str, Any]) -> dict[str, Any]:
        host = args.get("host")
        return service.status(None if host in (None, "") else parse_key_or_node_id(str(host)))

    async def exposed(args: dict[str, Any]) -> dict[str, Any]:
        return {"exposed": service.evidence.exposed()}

    return {"audit_status": status, "audit_exposed": exposed}


__all__ = ["control_handlers"]
