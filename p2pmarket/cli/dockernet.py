"""``p2pmarket testnet up --docker``, ``init``, ``compose`` and a docker testnet's
``status``: thin calls of :class:`p2pmarket.testnet.docker.DockerTestnet` and
:mod:`p2pmarket.testnet.compose` (``cli/testnet.py`` adds them to its parser)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from p2pmarket.cli.options import Subcommands
from p2pmarket.cli.terminal import dump, err, out
from p2pmarket.core.files import write_atomic
from p2pmarket.testnet import compose, docker, dockerimage
from p2pmarket.testnet.netns import load_topology
from p2pmarket.testnet.state import TestnetError

READY_TIMEOUT_S = 120.0
EXAMPLES = """examples:
  p2pmarket testnet up --docker testnet/default.toml --dir run/docker
  p2pmarket testnet init --docker testnet/default.toml --dir testnet/run
  docker-compose -p p2pm -f testnet/docker-compose.yml up -d
  p2pmarket testnet compose testnet/default.toml --data ./run -o testnet/docker-compose.yml"""


def add_docker_actions(actions: Subcommands,
                       dir_opt: Callable[[argparse.ArgumentParser], None]) -> None:
    """``testnet init --docker`` and ``testnet compose``."""
    ti = actions.add("init", "write a docker testnet's dir and compose file and build its "
                     "image, without starting it (then: docker-compose up)", EXAMPLES,
                     testnet_init)
    ti.add_argument("--docker", type=Path, metavar="TOPOLOGY", required=True,
                    help="the topology (testnet/README.md)")
    docker_opts(ti)
    dir_opt(ti)
    tc = actions.add("compose", "print the docker-compose.yml of a topology", EXAMPLES,
                     testnet_compose)
    tc.add_argument("topology", type=Path, metavar="TOPOLOGY")
    tc.add_argument("--project", default=compose.DEFAULT_PROJECT,
                    help="compose project: containers and networks are PROJECT-NAME")
    tc.add_argument("--data", default=".",
                    help="the testnet dir on the host, relative to the compose file")
    tc.add_argument("-o", "--output", type=Path, help="write it here instead")


def docker_opts(q: argparse.ArgumentParser) -> None:
    q.add_argument("--project", default=compose.DEFAULT_PROJECT,
                   help="docker: the compose project; containers and networks are "
                        "PROJECT-NAME (default p2pm)")
    q.add_argument("--base", default=dockerimage.LOCAL_BASE,
                   help="docker: the image's base, e.g. python:3.11-slim (default: the "
                        "local Debian image of testnet/build-base)")


def ready_or_kept(wait_ready: Callable[[float], None], timeout_s: float, root: Path,
                  doing: str) -> bool:
    """Wait for a testnet's nodes (``doing`` on the spinner); when they do not get
    ready, say why and that the testnet stays up for a look (both runners)."""
    try:
        with out.status(doing):
            wait_ready(timeout_s)
    except TestnetError as exc:
        err.print(f"error: {exc.message}")
        err.print(f"the testnet stays up for a look; `p2pmarket testnet down --dir {root}`")
        return False
    return True


def docker_up(args: argparse.Namespace) -> int:
    settings = {} if args.tick_seconds is None else {"tick_seconds": args.tick_seconds}
    with out.status("building the image and starting the containers…"):
        net = docker.DockerTestnet.up(args.docker, args.dir, project=args.project,
                                      base=args.base, settings=settings)
    nodes = len(net.topology.nodes)
    if not ready_or_kept(net.wait_ready, READY_TIMEOUT_S, args.dir,
                         f"waiting for {nodes} nodes in containers {args.project}-*…"):
        return 1
    out.print(f"docker testnet of {nodes} nodes up in {args.dir} (containers "
              f"{args.project}-*, genesis {net.genesis_path}, mint wallet "
              f"{compose.site_path(net.topology.mint)} in every container)")
    return 0


async def testnet_init(args: argparse.Namespace) -> int:
    with out.status("writing the testnet dir and building the image…"):
        docker.DockerTestnet.up(args.docker, args.dir, project=args.project, base=args.base,
                                start=False)
    out.print(f"docker testnet written to {args.dir}; start it with `docker-compose -p "
              f"{args.project} -f {args.dir / docker.COMPOSE_FILE} up -d`, take it down "
              f"with `p2pmarket testnet down --dir {args.dir}`")
    return 0


async def testnet_compose(args: argparse.Namespace) -> int:
    topo = load_topology(args.topology)
    text = compose.dump(compose.document(topo, compose.Options(args.project,
                                                               data=args.data)),
                        args.topology.as_posix())
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomic(args.output, text.encode())
    return 0


def docker_status(args: argparse.Namespace) -> int:
    rows = docker.DockerTestnet.open(args.dir).rows()
    errors = sum(1 for r in rows if r["ready"] is False or not r["running"])
    if args.json:
        dump({"sites": rows})
        return errors
    table = Table(title=f"docker testnet {args.dir}")
    for col in ("site", "container", "address", "role", "behind", "running", "ready",
                "contacts"):
        table.add_column(col)
    for r in rows:
        ready = "" if r["ready"] is None else "yes" if r["ready"] else r.get("error", "no")
        table.add_row(r["name"], r["container"], r["address"], r["role"], r["behind"] or "",
                      "yes" if r["running"] else "no", ready, str(r.get("contacts", "")))
    out.print(table)
    return errors
