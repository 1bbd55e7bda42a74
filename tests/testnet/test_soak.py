"""Soaks (root): ``scripts/soak`` buys, tops up, rebids and cancels at random while
the harness injects faults, and its last line is one JSON object with
invariant_violations == 0. In CI: two minutes on the session's compose testnet
(``compose_net``); by hand (``pytest -m long``): a short one and a two-minute one on
namespace testnets of their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pmarket.testnet.docker import DockerTestnet
from tests.testnet.conftest import REPO, needs_root, needs_tools

pytestmark = [needs_root, needs_tools]


def soak(minutes: float, timeout_s: float, *extra: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "soak"), "--minutes",
                           str(minutes), "--fault-every", "8", "--seed", "14", *extra],
                          capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, json.dumps({k: result.get(k) for k in (
        "fault_failures", "violations", "ops", "faults")}) + done.stderr[-2000:]
    return result


def test_a_two_minute_soak_on_the_compose_testnet_keeps_every_invariant(
        compose_net: DockerTestnet) -> None:
    result = soak(2, 600, "--backend", "docker", "--dir", str(compose_net.root))
    assert result["invariant_violations"] == 0 and result["fault_failures"] == []
    assert result["faults_injected"] >= 4 and result["purchases_ok"] >= 1
    print(json.dumps(result))


@pytest.mark.long
def test_a_short_soak_on_namespaces_keeps_every_invariant() -> None:
    result = soak(0.3, 300)
    assert result["invariant_violations"] == 0 and result["fault_failures"] == []
    assert result["faults_injected"] >= 1 and result["purchases_ok"] >= 1


@pytest.mark.long
def test_a_two_minute_soak_on_namespaces_keeps_every_invariant() -> None:
    result = soak(2, 900)
    assert result["invariant_violations"] == 0 and result["fault_failures"] == []
    assert result["faults_injected"] >= 4
