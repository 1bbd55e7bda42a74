"""A short soak on the namespace testnet (root): scripts/soak brings up its own
testnet, buys, tops up, rebids and cancels at random while faults are injected, and
its last line is one JSON object with invariant_violations == 0. About 80 s; the
2-minute soak the issue names runs by hand (``scripts/soak --minutes 2``) or with
``pytest -m long``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.testnet.conftest import REPO, needs_root, needs_tools

pytestmark = [needs_root, needs_tools]


def soak(minutes: float, timeout_s: float) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "soak"), "--minutes",
                           str(minutes), "--fault-every", "8", "--seed", "14"],
                          capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (result, done.stderr[-2000:])
    return result


def test_a_short_soak_keeps_every_invariant() -> None:
    result = soak(0.3, 300)
    assert result["invariant_violations"] == 0 and result["fault_failures"] == []
    assert result["faults_injected"] >= 1 and result["purchases_ok"] >= 1


@pytest.mark.long
def test_a_two_minute_soak_keeps_every_invariant() -> None:
    result = soak(2, 900)
    assert result["invariant_violations"] == 0 and result["fault_failures"] == []
    assert result["faults_injected"] >= 4
