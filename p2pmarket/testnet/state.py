"""The state file of a namespace testnet: everything it made, written before it is made.

``<testnet dir>/netns.json``::

    {"kind": "netns",
     "prefix": "p2pm3f2a",            the namespaces' prefix
     "python": "/usr/bin/python3",    the interpreter the nodes run on
     "built": false,                  true once `up` finished
     "namespaces": ["p2pm3f2a", "p2pm3f2a-nat1", ...],
     "processes": [{"name": "n1", "kind": "node", "namespace": "p2pm3f2a-n1",
                    "arg": "/abs/dir/n1", "pid": 1234}, ...]}

A namespace is listed before ``ip netns add`` runs and a process before it is
started (with ``pid`` null until it is known), so ``down`` finds everything even
after the runner was killed at any point. ``arg`` is the exact argument that
identifies the process in its command line (a node's data dir, tinyproxy's config).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.files import write_atomic

STATE_FILE = "netns.json"
PROGRAMS = {"node": "p2pmarket", "tinyproxy": "tinyproxy"}


class TestnetError(P2PMarketError):
    """A testnet could not be built, found, used or taken down."""


@dataclass(frozen=True)
class Proc:
    name: str          # the site (a node) or the proxy (tinyproxy)
    kind: str          # "node" | "tinyproxy"
    namespace: str
    arg: str
    pid: int | None = None

    @property
    def program(self) -> str:
        return PROGRAMS[self.kind]


@dataclass(frozen=True)
class State:
    prefix: str
    python: str
    built: bool = False
    namespaces: tuple[str, ...] = ()
    processes: tuple[Proc, ...] = ()

    def with_namespace(self, ns: str) -> State:
        return replace(self, namespaces=(*self.namespaces, ns))

    def with_process(self, proc: Proc) -> State:
        """The state with ``proc`` in place of the process of the same name."""
        others = tuple(p for p in self.processes if p.name != proc.name)
        return replace(self, processes=(*others, proc))

    def process(self, name: str) -> Proc | None:
        return next((p for p in self.processes if p.name == name), None)


def save(root: Path, state: State) -> None:
    doc = {"kind": "netns", "prefix": state.prefix, "python": state.python,
           "built": state.built, "namespaces": list(state.namespaces),
           "processes": [asdict(p) for p in state.processes]}
    write_atomic(root / STATE_FILE, json.dumps(doc, indent=2).encode() + b"\n")


def exists(root: Path) -> bool:
    return (root / STATE_FILE).exists()


def load(root: Path) -> State:
    path = root / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != "netns":
            raise ValueError("kind")
        procs = tuple(Proc(str(p["name"]), str(p["kind"]), str(p["namespace"]), str(p["arg"]),
                           None if p["pid"] is None else int(p["pid"]))
                      for p in doc["processes"])
        if any(p.kind not in PROGRAMS for p in procs):
            raise ValueError("kind")
        return State(str(doc["prefix"]), str(doc["python"]), bool(doc["built"]),
                     tuple(str(n) for n in doc["namespaces"]), procs)
    except FileNotFoundError:
        raise TestnetError(f"no namespace testnet in {root}", str(root)) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TestnetError(f"{path} is damaged", str(path)) from None


def wait_ready(nodes: list[str], exited: Callable[[str], str | None],
               statuses: Callable[[list[str]], Mapping[str, Mapping[str, Any]]],
               timeout_s: float, poll_s: float = 0.2) -> None:
    """Wait until every node's status says ready (both runners): ``exited(name)`` is
    where to look (its log) when the node has exited, else None; ``statuses`` asks the
    nodes still pending. Raises naming the nodes that exited, or that are not ready
    when ``timeout_s`` is out, with what each said last."""
    pending = list(nodes)
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        dead = {n: log for n in pending if (log := exited(n)) is not None}
        if dead:
            raise TestnetError("; ".join(f"{n} exited, see {log}" for n, log in dead.items()),
                               list(dead))
        for n, st in statuses(pending).items():
            if st.get("ready"):
                pending.remove(n)
            else:
                last[n] = str(st.get("error") or "it answers, not ready yet")
        if pending and time.monotonic() > deadline:
            raise TestnetError("; ".join(f"{n} not ready after {timeout_s:.0f}s "
                                         f"({last.get(n)})" for n in pending), pending)
        if pending:
            time.sleep(poll_s)


def node_columns(node: Mapping[str, Any]) -> dict[str, Any]:
    """A node's columns in ``testnet status`` (both runners), from its status."""
    cols = {"ready": bool(node.get("ready")), "balance": node.get("balance"),
            "contacts": node.get("dht_contacts")}
    return {**cols, "error": node["error"]} if "error" in node else cols
