"""The shape of the package: rooms without cycles, pure cores without I/O, small modules.

Reads every module of ``p2pmarket/`` with :mod:`ast` (imports inside functions and
under ``TYPE_CHECKING`` count too) and fails on:

- a cycle between folders (a folder is a package; its subpackages are folders of
  their own) or between modules;
- a ``_private`` name imported from another module;
- a pure core importing, directly or through other p2pmarket modules, a module that
  does I/O (:data:`IO_MODULES`);
- a module over :data:`MAX_LINES` lines.

The checks run on a tree given as a path, so the tests at the bottom plant each
fault in a scratch tree and see it reported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600
IO_MODULES = frozenset({"sqlite3", "asyncio", "aiohttp", "libvirt", "os", "socket",
                        "subprocess", "kademlia", "rpcudp"})
PURE_CORES = (
    "p2pmarket.auction",            # the whole folder: allocator, machine, steps, ...
    "p2pmarket.core.genesis",
    "p2pmarket.core.limits",
    "p2pmarket.core.money",
    "p2pmarket.core.identity",
    "p2pmarket.core.wire",
    "p2pmarket.core.sshkey",
    "p2pmarket.api.bounds",
    "p2pmarket.ledger.chain",
    "p2pmarket.ledger.certificate",
    "p2pmarket.ledger.sigcache",
    "p2pmarket.ledger.merkle",
    "p2pmarket.audit.entry",
    "p2pmarket.audit.evidence",     # proofs check offline
    "p2pmarket.audit.refunds",
    "p2pmarket.audit.replay",
    "p2pmarket.audit.watched",
    "p2pmarket.client.planner",
    "p2pmarket.client.kkt",
    "p2pmarket.client.quotecheck",
    "p2pmarket.dht.checks",
    "p2pmarket.dht.records",
    "p2pmarket.dht.offers",
    "p2pmarket.dht.offershards",
    "p2pmarket.dht.offerkeep",
    "p2pmarket.dht.prefixes",
    "p2pmarket.dht.evidence_records",
    "p2pmarket.dht.ratelimit",
    "p2pmarket.node.advert",
    "p2pmarket.nat.table",
    "p2pmarket.nat.addresses",
    "p2pmarket.nat.attestation",
    "p2pmarket.host.vmm.guest",
    "p2pmarket.host.vmm.guestnet",
    "p2pmarket.host.vmm.domainxml",
    "p2pmarket.host.vmm.lxcguest",
    "p2pmarket.nat.errors",
    "p2pmarket.nat.registry",
    "p2pmarket.nat.limits",
    "p2pmarket.nat.reachability",
    "p2pmarket.testnet.topology",
    "p2pmarket.testnet.plan",
    "p2pmarket.testnet.compose",    # topology -> docker-compose.yml
    "p2pmarket.testnet.invariants",
    "p2pmarket.nat.frames",         # the relay's circuit framing
    "p2pmarket.nat.reservation",    # relay vouchers
    "p2pmarket.nat.relaylimits",    # the relay's book
    "p2pmarket.nat.streamreq",      # stream requests and control messages
    "p2pmarket.host.forwardtable",  # which leased ports go where
    "p2pmarket.client.reachview",
    "p2pmarket.client.accessrec",  # the way in a lease reply names
    "p2pmarket.core.urls",
    "p2pmarket.sharp",              # claims, tickets, the claim tree, conflict proofs
    "p2pmarket.broker.policy",      # posted prices, the oversubscription degree
    "p2pmarket.broker.requests",
    "p2pmarket.dht.ticketads",
    "p2pmarket.client.reservepick",
    "p2pmarket.client.topview",     # what `p2pmarket top` shows
    "p2pmarket.history.buckets",    # the price history's downsampling
    "p2pmarket.history.samples",
    "p2pmarket.web.html",           # the dashboard's escaping, charts and pages
    "p2pmarket.web.svg",
    "p2pmarket.web.views",
)


@dataclass(frozen=True)
class Module:
    name: str          # dotted
    path: Path
    is_package: bool   # an __init__.py

    @property
    def folder(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    target: str        # the module imported (longest known prefix)
    name: str | None   # the name taken from it, for ``from m import name``
    line: int


def modules(root: Path, package: str = "p2pmarket") -> dict[str, Module]:
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


def _known(dotted: str, mods: Mapping[str, Module]) -> str | None:
    while dotted and dotted not in mods:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def imports(mod: Module, mods: Mapping[str, Module]) -> list[Import]:
    """Every import of a p2pmarket module in ``mod``, wherever it appears."""
    found = []
    for node in ast.walk(ast.parse(mod.path.read_text(), str(mod.path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, mods)
                if target:
                    found.append(Import(target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in mods:      # from package import module
                    found.append(Import(f"{source}.{alias.name}", None, node.lineno))
                elif (target := _known(source, mods)) is not None:
                    found.append(Import(target, alias.name, node.lineno))
    return found


def external_imports(mod: Module) -> set[str]:
    """Top-level names of the non-p2pmarket modules ``mod`` imports."""
    found = set()
    for node in ast.walk(ast.parse(mod.path.read_text(), str(mod.path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"p2pmarket"}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_graph(mods: Mapping[str, Module]) -> dict[str, set[str]]:
    return {m: {i.target for i in imports(mod, mods) if i.target != m}
            for m, mod in mods.items()}


def folder_graph(mods: Mapping[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m, targets in module_graph(mods).items():
        here = mods[m].folder
        graph.setdefault(here, set()).update(
            mods[t].folder for t in targets if mods[t].folder != here)
    return graph


def private_imports(mods: Mapping[str, Module]) -> list[str]:
    return [f"{m}:{i.line} imports {i.name} from {i.target}"
            for m, mod in mods.items() for i in imports(mod, mods)
            if i.name and i.name.startswith("_") and not i.name.startswith("__")
            and i.target != m]


def impure_cores(mods: Mapping[str, Module], cores: Iterable[str]) -> list[str]:
    """For each pure core module, the I/O modules it reaches, with the path there."""
    graph = module_graph(mods)
    faults = []
    for core in cores:
        starts = [m for m in mods if m == core or m.startswith(core + ".")]
        for start in starts:
            seen = {start: [start]}
            todo = [start]
            while todo:
                m = todo.pop()
                bad = external_imports(mods[m]) & IO_MODULES
                if bad:
                    faults.append(f"{start} imports {sorted(bad)} via {' -> '.join(seen[m])}")
                for t in sorted(graph[m]):
                    if t not in seen:
                        seen[t] = [*seen[m], t]
                        todo.append(t)
    return sorted(set(faults))


def long_modules(mods: Mapping[str, Module]) -> list[str]:
    return [f"{m}: {n} lines" for m, mod in mods.items()
            if (n := len(mod.path.read_text().splitlines())) > MAX_LINES]


# -- the package -------------------------------------------------------------------

MODS = modules(ROOT)


def test_no_cycle_between_folders() -> None:
    assert cycles(folder_graph(MODS)) == []


def test_no_cycle_between_modules() -> None:
    assert cycles(module_graph(MODS)) == []


def test_no_private_name_imported_from_another_module() -> None:
    assert private_imports(MODS) == []


def test_pure_cores_do_no_io() -> None:
    assert {c for c in PURE_CORES if c not in MODS} == set()
    assert impure_cores(MODS, PURE_CORES) == []


def test_modules_are_small() -> None:
    assert long_modules(MODS) == []


def test_folders_are_the_rooms() -> None:
    folders = {m.folder for m in MODS.values()}
    assert {"p2pmarket.dht", "p2pmarket.ledger", "p2pmarket.host", "p2pmarket.client",
            "p2pmarket.nat", "p2pmarket.auction", "p2pmarket.audit", "p2pmarket.core",
            "p2pmarket.cli", "p2pmarket.api", "p2pmarket.testnet"} <= folders


# -- the checks themselves, on planted faults ----------------------------------------

def _tree(root: Path, files: Mapping[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules(root)


CLEAN = {
    "p2pmarket/__init__.py": "",
    "p2pmarket/core/__init__.py": "",
    "p2pmarket/core/wire.py": "import msgpack\n\ndef pack(x): return x\n",
    "p2pmarket/auction/__init__.py": "",
    "p2pmarket/auction/steps.py": "from p2pmarket.core.wire import pack\n",
    "p2pmarket/host/__init__.py": "",
    "p2pmarket/host/store.py": "import sqlite3\nfrom p2pmarket.auction import steps\n",
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    mods = _tree(tmp_path, CLEAN)
    assert cycles(folder_graph(mods)) == [] and cycles(module_graph(mods)) == []
    assert private_imports(mods) == [] and long_modules(mods) == []
    assert impure_cores(mods, ["p2pmarket.auction"]) == []
    assert folder_graph(mods)["p2pmarket.host"] == {"p2pmarket.auction"}


def test_a_planted_folder_cycle_is_found_even_inside_a_function(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**CLEAN, "p2pmarket/core/wire.py":
                            "def late():\n    from p2pmarket.host.store import x\n"})
    assert cycles(folder_graph(mods)) == [["p2pmarket.auction", "p2pmarket.core",
                                           "p2pmarket.host"]]
    assert cycles(module_graph(mods)) == [["p2pmarket.auction.steps", "p2pmarket.core.wire",
                                           "p2pmarket.host.store"]]


def test_a_planted_module_cycle_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**CLEAN,
                            "p2pmarket/auction/a.py": "from p2pmarket.auction import b\n",
                            "p2pmarket/auction/b.py": "from .a import thing\n"})
    assert cycles(module_graph(mods)) == [["p2pmarket.auction.a", "p2pmarket.auction.b"]]
    assert cycles(folder_graph(mods)) == []


def test_a_private_import_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**CLEAN, "p2pmarket/auction/steps.py":
                            "from p2pmarket.core.wire import _canonical, __all__\n"})
    assert private_imports(mods) == [
        "p2pmarket.auction.steps:1 imports _canonical from p2pmarket.core.wire"]


def test_io_reached_through_another_module_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**CLEAN, "p2pmarket/core/wire.py": "import os.path\n"})
    assert impure_cores(mods, ["p2pmarket.auction"]) == [
        "p2pmarket.auction.steps imports ['os'] via p2pmarket.auction.steps -> "
        "p2pmarket.core.wire"]


def test_a_long_module_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**CLEAN, "p2pmarket/auction/big.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_modules(mods) == [f"p2pmarket.auction.big: {MAX_LINES + 1} lines"]


def documented_graph(design: Path) -> dict[str, set[str]]:
    """The folder graph docs/design.md section 1 gives (``A: B, C`` lines in the code
    block after "The graph, from the imports")."""
    text = design.read_text()
    block = text[text.index("The graph, from the imports"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    graph = {}
    for line in block.strip().splitlines():
        name, _, rest = line.partition(":")
        rest = rest.split("(")[0]
        graph["p2pmarket." + name.strip().replace("/", ".")] = {
            "p2pmarket." + t.strip().replace("/", ".") for t in rest.split(",")
            if t.strip() and t.strip() != "(nothing)"}
    return graph


def test_the_design_gives_the_folder_graph_as_it_is() -> None:
    actual = {f: deps for f, deps in folder_graph(MODS).items() if f != "p2pmarket"}
    documented = documented_graph(ROOT / "docs" / "design.md")
    assert {f: documented.get(f, set()) for f in actual} == actual
    assert set(documented) <= set(actual) | {"p2pmarket.core", "p2pmarket.nat"}
