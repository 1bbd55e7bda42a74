"""The files of a namespace testnet, written before any namespace exists.

Layout of a testnet directory::

    netns.json       what was made (p2pmarket.testnet.state)
    topology.toml    the topology it was built from
    genesis.json     the network: the notary sites, their DHT addresses as bootstrap
    <mint>/          the mint's wallet (its key is the genesis mint key)
    <site>/          a node's data dir (node.key, config.toml, genesis.json, node.log,
                     sqlite files) for a notary or host; a wallet dir for a buyer
    <proxy>/         tinyproxy.conf, tinyproxy.pid, tinyproxy.log
"""

from __future__ import annotations

from pathlib import Path

from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, Settings, save_genesis
from p2pmarket.core.files import write_atomic
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import save_key
from p2pmarket.testnet.plan import genesis_for, node_settings
from p2pmarket.testnet.topology import Topology

TOPOLOGY_FILE = "topology.toml"
GENESIS_FILE = "genesis.json"


def write_network(topo: Topology, root: Path) -> Genesis:
    """Keys for every notary, host and buyer and the mint; the genesis; each node's data
    dir with its config.toml (from :func:`plan.node_settings`); each buyer's wallet."""
    keys = {s.name: Identity.generate() for s in topo.sites}
    mint = Identity.generate()
    genesis = genesis_for(topo, [keys[s.name].public_key for s in topo.notaries],
                          mint.public_key)
    save_genesis(genesis, root / GENESIS_FILE)
    WalletDir(root / topo.mint).create(genesis, mint)
    for s in topo.nodes:
        d = DataDir(root / s.name)
        d.create()
        save_key(keys[s.name], d.key)
        save_genesis(genesis, d.genesis)
        settings = Settings().with_overrides(node_settings(topo, s))
        write_atomic(d.config, settings.to_toml().encode())
    for s in topo.buyers:
        WalletDir(root / s.name).create(genesis, keys[s.name])
    return genesis
