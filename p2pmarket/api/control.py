"""The CLI's side of the control API: find the running node and call it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from p2pmarket.core.config import DataDir
from p2pmarket.core.errors import P2PMarketError, RemoteError


class ControlError(P2PMarketError):
    """The local node is not running or refused the call."""


class ControlClient:
    def __init__(self, data_dir: DataDir, timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _endpoint(self) -> tuple[str, str]:
        try:
            info = json.loads(self.data_dir.control.read_text())
            token = self.data_dir.token.read_text().strip()
            return str(info["url"]), token
        except (FileNotFoundError, KeyError, ValueError):
            raise ControlError(f"no running node with data dir {self.data_dir.root}",
                               str(self.data_dir.root)) from None

    async def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        url, token = self._endpoint()
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session, session.post(
                f"{url}/v1/{name}", json=args or {},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                result = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ControlError(f"node at {url} did not answer: {type(exc).__name__}",
                               url) from None
        if not isinstance(result, dict):
            raise ControlError("node sent a malformed answer")
        if "error" in result:
            raise RemoteError(str(result["error"]), result.get("error_value"))
        return result
