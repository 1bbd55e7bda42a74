"""Every benchmark in scripts/bench/ still runs: each, at a tiny size, ends its output
with one JSON object holding the figures it names. (The figures themselves are for
the benchmarks to measure, not for tests to time; an API change that breaks a
benchmark must fail here, not on the next person who measures.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "auction.py": (["--accounts", "20", "--repeat", "1", "--vms", "2", "--bids", "3"],
                   {"tick_ms_20"}),
    "audit.py": (["--accounts", "5", "200", "--seconds", "10"],
                 {"audit_replay_per_s", "audit_check_per_s", "replay_per_s_200",
                  "realtime_x_200", "profile_200", "sigpool_procs_per_s"}),
    "dht.py": (["--nodes", "12", "--records", "10", "--gets", "10", "--queries", "5",
                "--no-stock"], {"success_rate", "get_p95_ms"}),
    "market_sim.py": (["--markets", "3", "--buyers", "3", "--hosts", "3", "--max-rounds", "50"],
                      {"rounds_p50", "efficiency_min", "efficiency_p50", "envy_min",
                       "envy_p50"}),
    "planner.py": (["--hosts", "50", "200", "--repeat", "1"], {"plan_ms_200", "before_ms_200",
                                                               "bundle_ms_200"}),
    "ledger.py": (["--transfers", "40", "--payers", "2", "--batch", "8", "--entries", "40"],
                  {"certified_transfers_per_s", "bytes_per_entry", "supply_ok"}),
    "idle_node.py": (["--nodes", "2", "--idle", "0.5", "--accounts", "20", "--scrapes", "5"],
                     {"peak_rss_mib_max", "scrape_p50_ms_20", "scrape_p95_ms_20"}),
    "buy.py": (["--nodes", "5", "--runs", "2"], {"buy_p50_ms", "buy_p95_ms", "lib_p50_ms",
                                               "cli_p50_ms", "plan_ms_10000"}),
    "relay.py": (["--calls", "20", "--upload-mb", "4"], {"relayed_p50_ms",
                                                          "relay_overhead_ratio",
                                                          "relay_upload_mb_s",
                                                          "relay_rss_growth_mb"}),
    "nat.py": (["--calls", "20", "--registrations", "5", "--upload-mb", "4"],
               {"register_p50_ms", "register_p95_ms", "register_public_p50_ms",
                "direct_rpc_p50_ms", "relayed_rpc_p50_ms", "relay_overhead_ratio",
                "relay_upload_mb_s", "relay_rss_growth_mb", "goals_met"}),
    "sharp.py": (["--runs", "2", "--requests", "40"],
                 {"reserve_p50_ms", "reserve_p95_ms", "rejection_rate_by_oversubscription"}),
    "testnet.py": (["--buys", "2", "--soak-minutes", "0.1"],
                   {"compose_up_s", "buy_p50_ms", "buy_p95_ms", "supply_ok",
                    "soak_invariant_violations"}),
    "workload.py": (["--upload-mb", "8", "--boot-runs", "1"],
                    {"upload_mb_s", "upload_rss_growth_mb", "boot_to_ssh_s_qemu",
                     "boot_to_ssh_s_lxc"}),
}
NEEDS_NETNS = {"nat.py"}   # builds a namespace testnet (as tests/testnet/ does)
NEEDS_LIBVIRTD = {"workload.py"}   # uploads into qemu:///system (scripts/setup-qemu)
NEEDS_DOCKER = {"testnet.py"}   # the compose testnet (scripts/setup-docker)


def _docker_missing() -> list[str]:
    from p2pmarket.testnet.docker import missing_requirements
    return missing_requirements()


def _libvirtd() -> bool:
    import libvirt
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_and_prints_json(script: str, tmp_path: Path) -> None:
    if script in NEEDS_NETNS and (os.geteuid() != 0 or shutil.which("ip") is None
                                  or shutil.which("iptables") is None):
        pytest.skip("namespace testnets need root, iproute2 (`ip`) and iptables; "
                    "run the tests as root")
    if script in NEEDS_DOCKER and (os.geteuid() != 0 or _docker_missing()):
        pytest.skip("the compose testnet needs root and dockerd (scripts/setup-docker): "
                    + "; ".join(_docker_missing()))
    if script in NEEDS_LIBVIRTD and not _libvirtd():
        pytest.skip("needs libvirtd on qemu:///system (scripts/setup-qemu)")
    args, figures = RUNS[script]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / script), *args,
                           "--json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(last, dict) and figures <= set(last), sorted(last)
