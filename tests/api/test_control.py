"""The local control API: token, unknown calls, bad bodies; and the CLI's client for it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from p2pmarket.api.control import ControlClient, ControlError
from p2pmarket.api.server import Site, control_app, jsonable, load_or_create_token
from p2pmarket.core.config import DataDir
from p2pmarket.core.errors import P2PMarketError, RemoteError


class State:
    def __init__(self) -> None:
        self.calls = 0

    async def bump(self, args: dict[str, Any]) -> dict[str, Any]:
        if "odd" in args:   # an error value JSON cannot carry, or a huge one
            raise P2PMarketError("odd value", {"set": {1, 2}, (1, 2): object(),
                                               "big": "x" * 10**6}[args["odd"]])
        if "result" in args:
            return {"value": {1, 2}}
        by = args.get("by", 1)
        if not isinstance(by, int) or by < 1:
            raise P2PMarketError("by must be a positive integer", by)
        self.calls += by
        return {"calls": self.calls, "raw": b"\x01\x02"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[DataDir, State, str]]:
    d = DataDir(tmp_path)
    token = load_or_create_token(d.token)
    state = State()
    site = Site(control_app(token, {"bump": state.bump}))
    port = await site.start("127.0.0.1", 0)
    d.control.write_text(json.dumps({"url": f"http://127.0.0.1:{port}"}))
    yield d, state, f"http://127.0.0.1:{port}"
    await site.stop()


async def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "api.token"
    token = load_or_create_token(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_token(path) == token and len(token) >= 32


async def test_call_through_client(node: tuple[DataDir, State, str]) -> None:
    d, state, _ = node
    result = await ControlClient(d).call("bump", {"by": 2})
    assert result == {"calls": 2, "raw": "0102"}  # bytes travel as hex
    with pytest.raises(RemoteError, match="positive integer"):
        await ControlClient(d).call("bump", {"by": -1})
    with pytest.raises(RemoteError, match="unknown control call"):
        await ControlClient(d).call("nope")
    assert state.calls == 2


@pytest.mark.parametrize("headers,body,status,message", [
    ({}, b"{}", 401, "token"),
    ({"Authorization": "Bearer wrong"}, b"{}", 401, "token"),
    (None, b"not json", 400, "not JSON"),
    (None, b"[1]", 400, "JSON object"),
])
async def test_refused_requests_change_nothing(node: tuple[DataDir, State, str],
                                               headers: dict[str, str] | None, body: bytes,
                                               status: int, message: str) -> None:
    d, state, url = node
    if headers is None:
        headers = {"Authorization": f"Bearer {d.token.read_text().strip()}"}
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/bump", data=body,
                                                    headers=headers) as r:
        assert r.status == status
        assert message in (await r.json())["error"]
    assert state.calls == 0


async def test_client_without_node(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no running node"):
        await ControlClient(DataDir(tmp_path)).call("status")


@pytest.mark.parametrize("args,status,message", [
    ({"odd": "set"}, 400, "odd value"), ({"odd": "big"}, 400, "odd value"),
    ({"result": 1}, 500, "internal error")])
async def test_error_values_json_cannot_carry_are_bounded(
        node: tuple[DataDir, State, str], args: dict[str, Any], status: int,
        message: str) -> None:
    d, _, url = node
    headers = {"Authorization": f"Bearer {d.token.read_text().strip()}"}
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/bump", json=args,
                                                    headers=headers) as r:
        assert r.status == status
        body = await r.read()
    assert len(body) < 20_000 and message in json.loads(body)["error"]


def test_jsonable() -> None:
    assert jsonable({b"\xff": [b"\x00", (1, "a")]}) == {"ff": ["00", [1, "a"]]}
