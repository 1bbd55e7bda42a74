"""The host owner's control calls and the image upload route (wired by p2pmarket.node.service).

Control API handlers (``POST /v1/<name>``, JSON in and out):

- ``host_status {}`` -> ``{config, tick_s, market, accounts: [ACCOUNT], vms: [VM]}``
- ``host_set_capacity {resource, amount}``: ``("disk", "100GiB")``, ``("cpu", 8000)``,
  ``("tcp_port", "30000-30099")`` (offer identifiers), ``("tcp_port,30000", "0")``
  (withdraw them) -> ``{config}``
- ``host_set_min_price {resource, price}``: micro-credits per second -> ``{config}``
- ``host_audit {since?, limit?}`` -> the audit log segment for a witness

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
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError, error_dict
from p2pmarket.core.wire import ReplayGuard, WireError, decode
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.upload import UPLOAD_KIND, upload_image

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

    return {"host_status": status, "host_set_capacity": set_capacity,
            "host_set_min_price": set_min_price, "host_audit": audit}


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
