"""End to end through the CLI: real node processes on loopback, mint, buy, verify.

These tests drive ``p2pmarket`` exactly as a user would (subprocesses, exit
codes, --json output) and check the results through the nodes' control APIs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.auction.lease import verify_lease
from p2pmarket.core.keyfile import load_key

pytestmark = pytest.mark.e2e
MINTED = 100_000_000


def cli(*args: str | Path, check: bool = True,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "p2pmarket", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2pmarket {' '.join(map(str, args))} exited "
                             f"{proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(*args: str | Path) -> Any:
    return json.loads(cli(*args, "--json").stdout)


def control(node_dir: Path, what: str) -> Any:
    return json.loads(cli("status", "--data-dir", node_dir, "--what", what).stdout)


@dataclass
class RunningTestnet:
    """A testnet started with `p2pmarket testnet up`, and a buyer's wallet."""

    root: Path
    wallet: Path

    def node_dirs(self) -> list[Path]:
        return sorted(self.root.glob("node[0-9]*"))

    def node_by_url(self, url: str) -> Path:
        for d in self.node_dirs():
            if control(d, "node")["url"] == url:
                return d
        raise AssertionError(f"no node serves {url}")


@pytest.fixture
def fast_audits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Witnesses audit every half second (ask for it before ``market``)."""
    monkeypatch.setenv("P2PMARKET_AUDIT_SECONDS", "0.5")


@pytest.fixture
def market(tmp_path: Path) -> Iterator[RunningTestnet]:
    root = tmp_path / "net"
    cli("testnet", "up", "--nodes", "3", "--dir", root, "--tick-seconds", "0.5")
    try:
        wallet = tmp_path / "wallet"
        cli("wallet", "new", "--genesis", root / "genesis.json", "--wallet", wallet)
        yield RunningTestnet(root, wallet)
    finally:
        cli("testnet", "down", "--dir", root, check=False)
        for d in root.glob("node[0-9]*"):  # every node shut down cleanly
            assert not (d / "control.json").exists(), d


def balance(wallet: Path) -> int:
    return int(cli_json("wallet", "balance", "--wallet", wallet)["balance"])


def mint_to_wallet(m: RunningTestnet) -> str:
    key = cli_json("wallet", "show", "--wallet", m.wallet)["key"]
    cli("bank", "mint", "--mint-wallet", m.root / "mint", "--to", key, "--amount", "100")
    assert balance(m.wallet) == MINTED
    return str(key)


def test_mint_buy_and_check_everything(market: RunningTestnet) -> None:
    key = mint_to_wallet(market)
    hosts = cli_json("hosts", "--wallet", market.wallet)["hosts"]
    assert len(hosts) == 3
    assert all(h["resources"]["memory"]["capacity"] > 0 for h in hosts)

    bought = cli_json("buy", "--wallet", market.wallet, "--budget", "10", "--duration", "1h",
                      "--hosts", "1", "cpu:1,0.1,1", "memory:1,256MiB,512MiB")["purchases"]
    assert len(bought) == 1
    purchase = bought[0]
    host_dir = market.node_by_url(purchase["url"])
    host_key = load_key(host_dir / "node.key").public_key
    host_before = 0  # hosts start with an empty chain

    # the lease verifies offline against the host's key and names us
    lease = verify_lease(bytes.fromhex(purchase["signed_lease"]), host_key)
    assert lease.holder.hex() == key
    assert lease.resources["memory"].min == 256 * 1024
    leased_memory = lease.resources["memory"].alloc
    assert 256 * 1024 <= leased_memory <= 512 * 1024

    # the host's VM exists with the leased memory
    vms = control(host_dir, "vms")["vms"]
    vm = next(v for v in vms if v["account_id"] == purchase["account_id"])
    assert vm["state"] == "running"
    assert vm["memory_kib"] == leased_memory

    # money moved exactly, and none was created
    paid = purchase["paid"]
    assert paid == 10_000_000
    assert balance(market.wallet) == MINTED - paid
    assert control(host_dir, "node")["balance"] == host_before + paid
    supply = control(market.root / "node0", "supply")
    assert supply["minted"] == MINTED
    assert supply["ok"] is True
    assert supply["balances"] + supply["pending"] == MINTED

    ledger = cli_json("ledger", "supply", "--wallet", market.wallet)
    assert ledger["errors"] == 0
    assert ledger["supply"] == MINTED
    assert [n["status"] for n in ledger["notaries"]] == ["ok"]
    history = cli_json("wallet", "history", "--wallet", market.wallet)["history"]
    assert [(e["kind"], e["delta"]) for e in history] == [
        ("OPEN", 0), ("RECV", MINTED), ("SEND", -paid)]
    assert history[-1]["balance"] == MINTED - paid
    assert all(e["certified"] for e in history)

    # the buyer handed the host's signed log commitment to the host's witnesses: they
    # hold it until an audit reaches its seq, then count it as confirmed
    witnesses = cli_json("audit", "status", host_key.hex(), "--wallet", market.wallet)
    holding = [h for w in witnesses["witnesses"] for h in w.get("hosts", [])
               if h.get("held", 0) + h.get("confirmed", 0) >= 1]
    assert holding, witnesses
    assert all(h["state"] != "exposed" for h in holding)

    # the buyer can fetch the current lease again at any time
    leases = cli_json("leases", "--wallet", market.wallet)["leases"]
    assert [entry["source"] for entry in leases] == ["current"]
    assert leases[0]["lease"]["lease_id"] == lease.lease_id


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def restart(node_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the node of ``node_dir`` again and wait until it is ready."""
    proc = subprocess.Popen([sys.executable, "-m", "p2pmarket", "node", "--data-dir",
                             str(node_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-m", "p2pmarket", "status", "--data-dir", str(node_dir)],
            capture_output=True, text=True)
        if done.returncode == 0:
            after = json.loads(done.stdout)
            if after.get("ready") and after.get("balance") is not None:
                return proc
        time.sleep(0.2)
    stop(proc)
    raise AssertionError("restarted node never became ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def audited(node_dir: Path, host_key: bytes) -> dict[str, Any] | None:
    """What the node, as a witness, knows of the host (None if it watches it not)."""
    doc = cli_json("audit", "status", "--data-dir", node_dir)["witnesses"][0]
    return next((h for h in doc.get("hosts", []) if h.get("host") == host_key.hex()), None)


def test_witness_survives_sigkill(fast_audits: None, market: RunningTestnet) -> None:
    mint_to_wallet(market)
    purchase = cli_json("buy", "--wallet", market.wallet, "--budget", "5", "--hosts", "1",
                        "cpu:1,0.1,1", "memory:1,128MiB,256MiB")["purchases"][0]
    host_key = load_key(market.node_by_url(purchase["url"]) / "node.key").public_key
    deadline = time.monotonic() + 30
    seen: dict[Path, dict[str, Any]] = {}
    while not seen and time.monotonic() < deadline:
        for d in market.node_dirs():
            got = audited(d, host_key)
            if got is not None and got["audited_seq"] >= 0 and got["state"] == "trusted":
                seen[d] = got
        time.sleep(0.3)
    assert seen, "no witness audited the host"
    witness_dir, before = next(iter(seen.items()))

    kill(json.loads((witness_dir / "control.json").read_text())["pid"])
    # audits far apart after the restart: what it knows now is what it kept
    proc = restart(witness_dir, {"P2PMARKET_AUDIT_SECONDS": "600"})
    try:
        after = audited(witness_dir, host_key)
        assert after is not None, "the restarted witness forgot the host"
        assert after["state"] == "trusted"
        assert after["audited_seq"] >= before["audited_seq"]
        assert after["url"] == before["url"]
    finally:
        stop(proc)


def test_host_survives_sigkill(market: RunningTestnet) -> None:
    mint_to_wallet(market)
    purchase = cli_json("buy", "--wallet", market.wallet, "--budget", "5", "--hosts", "1",
                        "cpu:1,0.1,1", "memory:1,128MiB,256MiB")["purchases"][0]
    host_dir = market.node_by_url(purchase["url"])
    before = control(host_dir, "node")
    history_before = control(host_dir, "history")["history"]
    accounts_before = control(host_dir, "accounts")["accounts"]

    kill(json.loads((host_dir / "control.json").read_text())["pid"])
    proc = restart(host_dir)
    try:
        after = control(host_dir, "node")
        # chain, balance and leases intact
        assert after["balance"] == before["balance"]
        history_after = control(host_dir, "history")["history"]
        assert history_after[: len(history_before)] == history_before
        accounts_after = {a["account_id"]: a for a in control(host_dir, "accounts")["accounts"]}
        for a in accounts_before:
            assert a["account_id"] in accounts_after
            assert accounts_after[a["account_id"]]["bids"] == a["bids"]
        leases = cli_json("leases", "--wallet", market.wallet)["leases"]
        assert leases[0]["source"] == "current"
        assert leases[0]["lease"]["lease_id"] == purchase["lease"]["lease_id"]
        # and it still sells: a second purchase from it works
        assert len(control(host_dir, "vms")["vms"]) >= 1
    finally:
        stop(proc)
