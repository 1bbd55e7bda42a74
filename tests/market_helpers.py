"""An in-process market: real Node objects (HTTP + UDP on 127.0.0.1) in one event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.cli import testnet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, Settings, load_genesis
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.keyfile import load_key
from p2pmarket.node.service import Node


@dataclass
class LocalMarket:
    root: Path
    genesis: Genesis
    nodes: list[Node]
    mint: WalletDir

    def wallet(self, name: str) -> WalletDir:
        wdir = WalletDir(self.root / name)
        if not wdir.exists():
            wdir.create(self.genesis)
        return wdir


@asynccontextmanager
async def local_market(root: Path, n: int = 2, tick_seconds: float = 0.2,
                       overrides: Mapping[int, dict[str, Any]] | None = None
                       ) -> AsyncIterator[LocalMarket]:
    """``n`` nodes (node0 the notary) started in this event loop, stopped on exit;
    ``overrides``: settings per node index."""
    dirs = testnet.create(root, n, tick_seconds=tick_seconds)
    genesis = load_genesis(root / "genesis.json")
    nodes = []
    try:
        for d in dirs:
            data = DataDir(d)
            settings = Settings.load(data.config, env={}).with_overrides(
                dict((overrides or {}).get(len(nodes), {})))
            node = Node(data, settings, genesis, load_key(data.key))
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.payments.ready.wait()
        yield LocalMarket(root, genesis, nodes, WalletDir(root / "mint"))
    finally:
        for node in reversed(nodes):
            await node.stop()
