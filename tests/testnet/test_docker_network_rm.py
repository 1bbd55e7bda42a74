"""Removing a compose testnet's networks through dockerd's stale-endpoint race
(:func:`p2pmarket.testnet.docker.remove_network`), against a stand-in ``docker``
executable that logs its calls: no dockerd needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2pmarket.testnet import docker, state

# refuses "network rm" the first $FAILS times with dockerd's message, then removes it
FAKE = """#!/bin/sh
echo "$*" >> "{log}"
case "$1 $2" in
  "network rm")
    n=$(grep -c "^network rm" "{log}")
    if [ "$n" -le {fails} ]; then
      echo "Error response from daemon: error while removing network:" \
           "network $3 id 2b has {error}" >&2
      exit 1
    fi ;;
  "network inspect") echo "p2pmb-h1 p2pmb-b1 " ;;
esac
exit 0
"""


def fake_docker(tmp_path: Path, fails: int, error: str = "active endpoints") -> Path:
    exe = tmp_path / "docker"
    exe.write_text(FAKE.format(log=tmp_path / "calls", fails=fails, error=error))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.fixture(autouse=True)
def no_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker, "NETWORK_RM_GAP_S", 0.0)


def test_stale_endpoints_are_disconnected_and_the_removal_tried_again(
        tmp_path: Path) -> None:
    docker.remove_network(str(fake_docker(tmp_path, fails=2)), "p2pmb-internet",
                          ["p2pmb-h1", "p2pmb-n1"])
    # listed (h1, b1) or not (n1: an endpoint whose container is gone)
    stale = ["network inspect -f {{range $id, $c := .Containers}}{{$c.Name}} {{end}} "
             "p2pmb-internet", "network disconnect -f p2pmb-internet p2pmb-b1",
             "network disconnect -f p2pmb-internet p2pmb-h1",
             "network disconnect -f p2pmb-internet p2pmb-n1"]
    assert calls(tmp_path) == ["network rm p2pmb-internet", *stale,
                               "network rm p2pmb-internet", *stale,
                               "network rm p2pmb-internet"]


def test_a_removal_that_never_succeeds_is_an_error_after_the_last_try(
        tmp_path: Path) -> None:
    with pytest.raises(state.TestnetError, match="active endpoints"):
        docker.remove_network(str(fake_docker(tmp_path, fails=99)), "p2pmb-internet")
    assert sum(c.startswith("network rm") for c in calls(tmp_path)) \
        == docker.NETWORK_RM_TRIES


def test_another_error_is_not_retried(tmp_path: Path) -> None:
    with pytest.raises(state.TestnetError, match="permission denied"):
        docker.remove_network(str(fake_docker(tmp_path, fails=1, error="permission denied")),
                              "p2pmb-internet")
    assert calls(tmp_path) == ["network rm p2pmb-internet"]


def test_a_network_already_gone_is_fine(tmp_path: Path) -> None:
    docker.remove_network(str(fake_docker(tmp_path, fails=1, error="not found")), "x")
    assert calls(tmp_path) == ["network rm x"]
