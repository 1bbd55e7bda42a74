"""The host owner's control calls and the image upload route (wired by p2pmarket.node.service).

Control API handlers (``POST /v1/<name>``, JSON in and out):

- ``host_status {}`` -> ``{config, tick_s, market, accounts: [ACCOUNT], reservations,
  vms: [VM]}``
- ``host_set_capacity {resource, amount}``: ``("disk", "100GiB")``, ``("cpu", 8000)``,
  ``("tcp_port", "30000-30099")`` (offer identifiers), ``("tcp_port,30000", "0")``
  (withdraw them) -> ``{config}``
- ``host_set_min_price {resource, price}``: micro-credits per second -> ``{config}``
- ``host_audit {since?, limit?}`` -> the audit log segment for a witness
- SHARP (docs/design.md section 10): ``host_set_reservable {resource, amount}`` (an
  amount with a unit, or ``"20%"`` of the capacity) and ``host_set_anchor_price
  {resource, price}`` (micro-credits per unit-hour; 0: not for sale) -> ``{config}``;
  ``host_delegate {to (agent key, hex), resources: {type: amount}, start, end (µs)}`` ->
  ``{tickets: [hex of a ticket's msgpack, as in a ticket file]}``, one anchor per
  resource by the owner's policy

Image upload (seed 4/1/2008: images are 300 MB-2 GB, so never whole in memory):
``PUT /host/image/<account_id>`` on the peer app, body = the raw image,
``Content-Length`` required, header ``X-P2PM-Auth`` = hex of a signed envelope
from the account holder: kind ``host.upload``, ``to`` = the host's node id,
body ``{account_id, size, sha256}`` (sha256: 32 bytes, of the image). The body
is streamed in chunks into the account's storage volume (checked first:
:mod:`p2pmarket.host.upload`); a body that sends nothing for :data:`STALL_S` seconds
is cut off (the upload fails as truncated).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from p2pmarket.api.server import ControlHandler, jsonable
from p2pmarket.auction import HostError
from p2pmarket.auction.resources import parse_quantity, resource_type
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError, error_dict
from p2pmarket.core.identity import IdentityError, parse_public_key
from p2pmarket.core.wire import ReplayGuard, WireError, decode, pack
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.upload import UPLOAD_KIND, upload_image
from p2pmarket.sharp.claims import Rset, Term, TicketError

AUTH_HEADER = "X-P2PM-Auth"
CHUNK = 1024 * 1024
STALL_S = 60.0


async def body_chunks(request: web.Request, stall_s: float = STALL_S
                      ) -> AsyncIterator[bytes]:
    """The request body, up to :data:`CHUNK` at a time; :class:`TimeoutError` if no
    byte comes for ``stall_s``."""
    while chunk := await asyncio.wait_for(request.content.read(CHUNK), stall_s):
        yield chunk


def control_handlers(auct: Auctioneer) -> dict[str, ControlHandler]:
    async def status(args: dict[str, Any]) -> dict[str, Any]:
        return {"config": auct.config.to_doc(), "tick_s": auct.settings.tick_seconds,
                "market": auct.market_summary(),
                "accounts": [auct.account_doc(a) for a in auct.accounts()],
                "reservations": auct.reservations_doc(),
                "vms": await auct.vm_list()}

    async def set_capacity(args: dict[str, Any]) -> dict[str, Any]:
        _keys(args, {"resource", "amount"})
        await auct.set_config(auct.config.with_capacity(str(args["resource"]), args["amount"]))
        return {"config": auct.config.to_doc()}

    async def set_min_price(args: dict[str, Any]) -> dict[str, Any]:
        _keys(args, {"resource", "price"})
        await auct.set_config(auct.config.with_min_price(str(args["resource"]), args["price"]))
        return {"config": auct.config.to_doc()}

    async def audit(args: dict[str, Any]) -> dict[str, Any]:
        since, limit = args.get("since", 0), args.get("limit", 1000)
        if not isinstance(since, int) or not isinstance(limit, int):
            raise HostError("since and limit must be integers")
        return auct.audit.segment(max(0, since), min(max(0, limit), 10_000))

    async def set_reservable(args: dict[str, Any]) -> dict[str, Any]:
        _keys(args, {"resource", "amount"})
        await auct.set_config(auct.config.with_reservable(str(args["resource"]),
                                                          args["amount"]))
        return {"config": auct.config.to_doc()}

    async def set_anchor_price(args: dict[str, Any]) -> dict[str, Any]:
        _keys(args, {"resource", "price"})
        await auct.set_config(auct.config.with_anchor_price(str(args["resource"]),
                                                            args["price"]))
        return {"config": auct.config.to_doc()}

    async def delegate(args: dict[str, Any]) -> dict[str, Any]:
        _keys(args, {"to", "resources", "start", "end"})
        try:
            holder = parse_public_key(str(args["to"]))
            term = Term(args["start"], args["end"])
        except (IdentityError, TicketError) as exc:
            raise HostError(exc.message, exc.value) from None
        resources = args["resources"]
        if not isinstance(resources, dict) or not resources:
            raise HostError("resources must be a map {type: amount}, e.g. {cpu: 2000MHz}")
        rsets = []
        for kind, amount in sorted(resources.items()):
            q = parse_quantity(str(kind), str(amount))
            if q.fraction:
                raise HostError(f"{kind}: give an amount with a unit", str(amount)[:40])
            try:
                rsets.append(Rset(resource_type(str(kind)), q.value))
            except TicketError as exc:
                raise HostError(exc.message, exc.value) from None
        tickets = [await auct.delegate(holder, r, term) for r in rsets]
        # as in a ticket file (sharp.ticketfile): JSON has no bytes
        return {"tickets": [pack(t.to_wire()).hex() for t in tickets]}

    return {"host_status": status, "host_set_capacity": set_capacity,
            "host_set_min_price": set_min_price, "host_audit": audit,
            "host_set_reservable": set_reservable, "host_set_anchor_price": set_anchor_price,
            "host_delegate": delegate}


def _keys(args: dict[str, Any], keys: set[str]) -> None:
    if set(args) != keys:
        raise HostError(f"expected the arguments {sorted(keys)}", sorted(map(str, args)))


def upload_route(auct: Auctioneer, guard: ReplayGuard | None = None) -> web.RouteDef:
    """The aiohttp route for image uploads (add it to ``peer_app(extra_routes=...)``)."""
    replay = guard or ReplayGuard()

    async def handler(request: web.Request) -> web.Response:
        try:
            env = decode(bytes.fromhex(request.headers.get(AUTH_HEADER, "")), ENVELOPE)
            if env.kind != UPLOAD_KIND or env.to != auct.identity.node_id:
                raise WireError("upload authorization is for another host or purpose")
            replay.accept(env.sender, env.ts, auct.clock())
            body = env.body
            if not isinstance(body, dict) or set(body) != {"account_id", "size", "sha256"}:
                raise HostError("upload authorization body must be {account_id, size, sha256}")
            if body["account_id"] != request.match_info["account_id"]:
                raise HostError("upload authorization names another account")
            if request.content_length != body["size"]:
                raise HostError("Content-Length must equal the authorized size",
                                {"content_length": request.content_length,
                                 "size": body["size"]})
            result = await upload_image(auct, env.sender, body["account_id"], body["size"],
                                        body["sha256"], body_chunks(request))
        except ValueError:
            return web.json_response(error_dict("bad upload authorization header"), status=401)
        except WireError as exc:
            return web.json_response(error_dict(exc.message), status=401)
        except P2PMarketError as exc:
            return web.json_response(error_dict(exc.message, jsonable(exc.value)), status=400)
        return web.json_response(jsonable(result))

    return web.put("/host/image/{account_id}", handler)
