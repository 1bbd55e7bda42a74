"""A testnet of Docker containers built from a topology, through Docker Compose.

:meth:`DockerTestnet.up` writes the testnet dir (:func:`write_files`: the same data
dirs, wallets and genesis as the namespace runner, :mod:`.datadirs`, plus each
proxy's tinyproxy.conf and ``docker-compose.yml`` from :mod:`.compose`), builds the
image (:mod:`.dockerimage`, cached by the daemon), lists every container and network
it is about to make in the state file, then runs ``docker-compose up -d``: the
routers, proxies and notaries first, the rest once the notaries listen. A node's
control API is on 127.0.0.1 inside its container: whatever talks to it runs there
(:meth:`DockerTestnet.exec`). ``<testnet dir>/docker.json``::

    {"kind": "docker", "project": "p2pm", "image": "p2pmarket-testnet:latest",
     "built": true, "containers": ["p2pm-nat1", ...], "networks": ["p2pm-internet", ...],
     "volumes": []}

:func:`down` reads only that file and removes the listed containers (with their
anonymous volumes) and networks that exist and carry the project's Compose label:
it cleans up after a runner killed at any point, and touches nothing else.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from p2pmarket.core.files import write_atomic
from p2pmarket.testnet import compose, dockerimage
from p2pmarket.testnet.datadirs import GENESIS_FILE, TOPOLOGY_FILE, write_network
from p2pmarket.testnet.state import TestnetError, node_columns, wait_ready
from p2pmarket.testnet.topology import Topology, parse

STATE_FILE = "docker.json"
COMPOSE_FILE = "docker-compose.yml"
LABEL = "com.docker.compose.project"
CMD_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 15.0
LISTEN_WAIT_S = 30.0
NETWORK_RM_TRIES = 10
NETWORK_RM_GAP_S = 1.0


@dataclass(frozen=True)
class DockerState:
    project: str
    image: str
    built: bool = False
    containers: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()


def save_state(root: Path, st: DockerState) -> None:
    doc = {"kind": "docker", **asdict(st)}
    write_atomic(root / STATE_FILE, json.dumps(doc, indent=2).encode() + b"\n")


def state_exists(root: Path) -> bool:
    return (root / STATE_FILE).exists()


def load_state(root: Path) -> DockerState:
    path = root / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != "docker":
            raise ValueError("kind")
        return DockerState(str(doc["project"]), str(doc["image"]), bool(doc["built"]),
                           *(tuple(str(x) for x in doc[k])
                             for k in ("containers", "networks", "volumes")))
    except FileNotFoundError:
        raise TestnetError(f"no docker testnet in {root}", str(root)) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TestnetError(f"{path} is damaged", str(path)) from None


def run(argv: list[str], timeout_s: float = CMD_TIMEOUT_S,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a ``docker``/``docker-compose`` command; its failure raises with what it said."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestnetError(f"{' '.join(argv)}: {exc}", argv) from None
    if check and done.returncode != 0:
        raise TestnetError(f"{' '.join(argv[:4])} ... failed: {done.stderr.strip()[-1500:]}",
                           argv)
    return done


def missing_requirements(docker: str = "docker", compose_cmd: str = "docker-compose"
                         ) -> list[str]:
    """What this machine lacks for a docker testnet (scripts/setup-docker brings it)."""
    missing = [f"`{tool}` is missing (scripts/setup-docker)" for tool in (docker, compose_cmd)
               if shutil.which(tool) is None]
    if not missing and run([docker, "version"], timeout_s=20, check=False).returncode != 0:
        missing.append("dockerd does not answer (scripts/setup-docker starts it)")
    return missing


def write_files(topo: Topology, root: Path, topology_text: str,
                options: compose.Options) -> None:
    """The testnet dir of a docker testnet (no container yet): topology.toml, genesis,
    data dirs and wallets, each proxy's tinyproxy.conf, docker-compose.yml."""
    doc = compose.document(topo, options)        # checks before anything is written
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / TOPOLOGY_FILE, topology_text.encode())
    write_network(topo, root)
    for x in topo.proxies:
        (root / x.name).mkdir(exist_ok=True)
        write_atomic(root / x.name / "tinyproxy.conf", compose.tinyproxy_conf(x).encode())
    write_atomic(root / COMPOSE_FILE, compose.dump(doc, TOPOLOGY_FILE).encode())


def _existing(docker: str, what: str, project: str) -> set[str]:
    kind = ["ps", "-a"] if what == "containers" else ["network", "ls"]
    done = run([docker, *kind, "--filter", f"label={LABEL}={project}",
                "--format", "{{.Names}}" if what == "containers" else "{{.Name}}"])
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def down(root: Path, docker: str = "docker") -> int:
    """Remove what the state file lists and exists with the project's label; then the
    state file. Idempotent. Returns how many containers were removed."""
    root = root.resolve()
    if not state_exists(root):
        return 0
    st = load_state(root)
    gone = sorted(_existing(docker, "containers", st.project) & set(st.containers))
    if gone:
        run([docker, "rm", "-f", "-v", *gone])
    for net in sorted(_existing(docker, "networks", st.project) & set(st.networks)):
        remove_network(docker, net, st.containers)
    (root / STATE_FILE).unlink(missing_ok=True)
    return len(gone)


def remove_network(docker: str, net: str, members: Sequence[str] = ()) -> None:
    """``docker network rm``, through dockerd's race: just after its containers were
    removed a network may still hold their endpoints ("has active endpoints", moby
    issues 17217, 42119), listed or not, so the endpoints it lists and those named
    after ``members`` (the testnet's containers: ``disconnect -f`` deletes an endpoint
    by its container's name even when the container is gone) are disconnected by force
    and the removal tried again (bounded: :data:`NETWORK_RM_TRIES`, about
    ``NETWORK_RM_GAP_S`` apart)."""
    for attempt in range(NETWORK_RM_TRIES):
        done = run([docker, "network", "rm", net], check=False)
        if done.returncode == 0 or "not found" in done.stderr:
            return
        if "active endpoints" not in done.stderr or attempt == NETWORK_RM_TRIES - 1:
            raise TestnetError(f"docker network rm {net} failed: "
                               f"{done.stderr.strip()[-1500:]}", net)
        listed = run([docker, "network", "inspect", "-f",
                      "{{range $id, $c := .Containers}}{{$c.Name}} {{end}}", net],
                     check=False)
        for name in sorted(set(listed.stdout.split()) | set(members)):
            run([docker, "network", "disconnect", "-f", net, name], check=False)
        time.sleep(NETWORK_RM_GAP_S)


class DockerTestnet:
    """A running (or half-built) docker testnet in ``root``."""

    def __init__(self, root: Path, topology: Topology, st: DockerState,
                 docker: str = "docker", compose_cmd: str = "docker-compose") -> None:
        self.root = root
        self.topology = topology
        self.state = st
        self.docker = docker
        self.compose_cmd = compose_cmd

    @classmethod
    def up(cls, topology_path: Path, root: Path, *, project: str = compose.DEFAULT_PROJECT,
           base: str = dockerimage.LOCAL_BASE, image: str = compose.DEFAULT_IMAGE,
           settings: Mapping[str, Any] | None = None, start: bool = True,
           build: bool = True, docker: str = "docker") -> DockerTestnet:
        """Write the testnet dir ``root`` (new or empty), build the image on ``base``
        (unless ``build`` is false: ``image`` is then taken as it is) and (unless
        ``start`` is false) start every container. On a failure while
        starting, takes down what it made and raises. Does not wait for readiness
        (:meth:`wait_ready`)."""
        text = topology_path.read_text()
        topo = parse(text).with_settings(settings or {})
        root = root.resolve()
        if root.exists() and any(root.iterdir()):
            raise TestnetError(f"{root} is not empty: a docker testnet needs a new dir",
                               str(root))
        problems = missing_requirements(docker)
        if problems:
            raise TestnetError("; ".join(problems), problems)
        taken = (_existing(docker, "containers", project)
                 | _existing(docker, "networks", project))
        if taken:
            raise TestnetError(f"the compose project {project!r} is in use "
                               f"({', '.join(sorted(taken))}): take it down or choose "
                               "another project", project)
        write_files(topo, root, text, compose.Options(project=project, image=image))
        if build:
            dockerimage.build(image, base, docker)
        net = cls(root, topo, DockerState(project, image), docker)
        net._save(replace(net.state, containers=tuple(compose.containers(topo, project)),
                          networks=tuple(compose.networks(topo, project))))
        if start:
            try:
                net.start_all()
            except BaseException:
                with contextlib.suppress(TestnetError):
                    net.down()
                raise
        net._save(replace(net.state, built=True))
        return net

    @classmethod
    def open(cls, root: Path, docker: str = "docker") -> DockerTestnet:
        root = root.resolve()
        st = load_state(root)
        return cls(root, parse((root / TOPOLOGY_FILE).read_text()), st, docker)

    def _save(self, st: DockerState) -> None:
        save_state(self.root, st)
        self.state = st

    def down(self) -> int:
        return down(self.root, self.docker)

    # -- where things are ------------------------------------------------------------

    def container(self, name: str) -> str:
        names = {x.name for x in (*self.topology.sites, *self.topology.gateways)}
        if name not in names:
            raise TestnetError(f"no site, router or proxy named {name!r}", name)
        return compose.container_name(self.state.project, name)

    def path(self, name: str) -> str:
        """A site's data dir or wallet dir (or the mint's) inside the containers."""
        return compose.site_path(name)

    def host_path(self, name: str) -> Path:
        """The same dir on this machine."""
        return self.root / name

    @property
    def genesis_path(self) -> Path:
        return self.root / GENESIS_FILE

    # -- running ---------------------------------------------------------------------

    def compose(self, *args: str, timeout_s: float = CMD_TIMEOUT_S
                ) -> subprocess.CompletedProcess[str]:
        return run([self.compose_cmd, "-p", self.state.project, "-f",
                    str(self.root / COMPOSE_FILE), *args], timeout_s)

    def start_all(self) -> None:
        """Routers, proxies and notaries, then (once the notaries listen) the rest."""
        topo = self.topology
        first = [*(g.name for g in topo.gateways), *(s.name for s in topo.notaries)]
        self.compose("up", "-d", "--no-build", *first)
        self._wait_listening([s.name for s in topo.notaries], LISTEN_WAIT_S)
        self.compose("up", "-d", "--no-build")

    def _wait_listening(self, sites: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all((self.host_path(s) / "control.json").exists() for s in sites):
            dead = [s for s in sites if not self.running(s)]
            if dead or time.monotonic() > deadline:
                raise TestnetError(f"nodes did not start ({', '.join(dead) or 'timeout'}); "
                                   f"see {self.host_path((dead or sites)[0]) / 'node.log'}",
                                   dead)
            time.sleep(0.05)

    def running(self, name: str) -> bool:
        done = run([self.docker, "inspect", "-f", "{{.State.Running}}", self.container(name)],
                   check=False)
        return done.stdout.strip() == "true"

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        return [self.docker, "exec", self.container(name), *argv]

    def exec(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in a container (``subprocess.run`` keyword arguments)."""
        return subprocess.run(self.exec_argv(name, argv), **kwargs)

    def kill(self, name: str) -> None:
        """SIGKILL a container (a crash, for fault tests); :meth:`start` brings it back."""
        run([self.docker, "kill", self.container(name)])

    def start(self, name: str) -> None:
        run([self.docker, "start", self.container(name)])

    # -- asking the nodes ------------------------------------------------------------

    def statuses(self, sites: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Each node's ``p2pmarket status`` (in its container, all at once), or
        ``{"error": ...}`` for one that did not answer."""
        names = sites if sites is not None else [s.name for s in self.topology.nodes]
        children = {n: subprocess.Popen(
            self.exec_argv(n, [compose.PYTHON, "-m", "p2pmarket", "status", "--data-dir",
                               self.path(n)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True) for n in names}
        deadline = time.monotonic() + STATUS_TIMEOUT_S
        found: dict[str, dict[str, Any]] = {}
        for n, child in children.items():
            try:
                out, errs = child.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                found[n] = {"error": "status timed out"}
                continue
            try:
                doc = json.loads(out) if child.returncode == 0 else None
            except ValueError:
                doc = None
            found[n] = doc if isinstance(doc, dict) else {
                "error": (errs.strip().splitlines() or ["no answer"])[-1]}
        return found

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every node says ready; raises naming those that are not."""
        wait_ready([s.name for s in self.topology.nodes],
                   lambda n: None if self.running(n) else f"{self.host_path(n)}/node.log",
                   self.statuses, timeout_s, poll_s=0.3)

    def rows(self) -> list[dict[str, Any]]:
        """One row per site for ``testnet status``."""
        st = self.statuses()
        rows = []
        for s in self.topology.sites:
            row: dict[str, Any] = {"name": s.name, "container": self.container(s.name),
                                   "address": s.address, "role": s.role,
                                   "behind": s.behind, "running": self.running(s.name),
                                   "ready": None}
            if s.runs_node:
                row.update(node_columns(st[s.name]))
            rows.append(row)
        return rows
