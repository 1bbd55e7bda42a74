"""How a buyer's commands reach the network: the address its DHT client binds, an HTTP
proxy, and the HTTP DHT gateway it uses behind one (docs/design.md section 7).

From, in increasing precedence: the defaults, the ``P2PMARKET_BIND_HOST``,
``P2PMARKET_HTTP_PROXY`` and ``P2PMARKET_DHT_GATEWAY`` environment variables, and the
command's ``--bind-host``, ``--http-proxy`` and ``--dht-gateway`` flags.

- ``bind_host``: empty binds the wildcard of the bootstrap peers' address family, so
  the kernel picks the source address of the route to each peer;
- ``http_proxy``: all HTTP goes through it, and the DHT is read through a public
  peer's gateway instead of UDP (a proxied machine has no route out);
- ``dht_gateway``: that peer's base URL; empty: the first bootstrap peer's URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis


@dataclass(frozen=True)
class ClientNet:
    bind_host: str = ""
    http_proxy: str = ""
    dht_gateway: str = ""

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None,
             flags: Mapping[str, str | None] | None = None) -> ClientNet:
        env = os.environ if env is None else env
        net = cls(bind_host=env.get("P2PMARKET_BIND_HOST", ""),
                  http_proxy=env.get("P2PMARKET_HTTP_PROXY", ""),
                  dht_gateway=env.get("P2PMARKET_DHT_GATEWAY", ""))
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        net = replace(net, **given)
        for name in ("http_proxy", "dht_gateway"):
            value = getattr(net, name)
            if value and not value.startswith(("http://", "https://")):
                raise P2PMarketError(f"--{name.replace('_', '-')} must be an http:// URL",
                                     value)
        return net

    @property
    def proxy(self) -> str | None:
        """For aiohttp's ``proxy=``."""
        return self.http_proxy or None

    def bind_for(self, genesis: Genesis) -> str:
        """The address the DHT client binds (see the module docstring)."""
        if self.bind_host:
            return self.bind_host
        v6 = bool(genesis.bootstrap) and all(":" in b.host for b in genesis.bootstrap)
        return "::" if v6 else "0.0.0.0"

    def gateway_for(self, genesis: Genesis) -> str | None:
        """The gateway URL when the DHT is read over HTTP (behind a proxy), else None."""
        if not self.http_proxy and not self.dht_gateway:
            return None
        if self.dht_gateway:
            return self.dht_gateway
        if genesis.bootstrap:
            return genesis.bootstrap[0].url
        raise P2PMarketError("behind a proxy the DHT is read through a gateway, and the "
                             "genesis names no bootstrap peer: give --dht-gateway")
