"""Logging in to what was bought: ``p2pmarket ssh LEASE`` (runs ``ssh`` to the lease's
guest, through its leased tcp port; ``--print`` only prints the command) and
``p2pmarket tunnel LEASE`` (ssh's ProxyCommand for a host behind a relay: stdin and
stdout piped to the port over the relay) (:mod:`p2pmarket.client.sshaccess`)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from typing import NoReturn

from p2pmarket.cli.options import Subcommands, json_opt, net_of, wallet_dir, wallet_opt
from p2pmarket.cli.terminal import dump
from p2pmarket.client.sshaccess import (
    SshError,
    current_access,
    run_tunnel,
    ssh_argv,
    stdio,
    tunnel_argv,
)

SSH_EXAMPLES = """examples:
  p2pmarket ssh 3f9a0c…                 # log in as root (a unique prefix of the id will do)
  p2pmarket ssh 3f9a0c… --print         # only print the ssh command
  p2pmarket ssh -i ~/.ssh/id_ed25519 3f9a0c… -- -L 8080:localhost:80
                                        # options before LEASE, ssh's own after --

a host reached at its own address: ssh -p PORT root@ADDRESS; a host behind a relay:
ssh -o ProxyCommand='p2pmarket tunnel LEASE' -o HostKeyAlias=p2pmarket-LEASE root@lease-LEASE
(the lease must hold a tcp port: bid on one, e.g. tcp_port,30000:1).
--json (with --print): {lease_id, reach ("direct" or "relay"), address, port, argv, command}"""
TUNNEL_EXAMPLES = """examples:
  ssh -o ProxyCommand='p2pmarket tunnel 3f9a0c…' root@lease

pipes stdin and stdout to the lease's SSH port (over the host's relay, signed by the
wallet's key, or straight to a host reached at its own address)."""


def add_ssh(sub: Subcommands) -> None:
    """``ssh`` and ``tunnel``."""
    s = sub.add("ssh", "Log in to a lease's machine over SSH.", SSH_EXAMPLES, ssh_cmd)
    s.add_argument("lease", metavar="LEASE", help="lease id (see `p2pmarket leases`)")
    s.add_argument("--user", default="root", help="the guest's user (default root)")
    s.add_argument("-i", "--identity-file", default=None, metavar="KEY",
                   help="the private key ssh logs in with")
    s.add_argument("--print", dest="print_only", action="store_true",
                   help="print the ssh command instead of running it")
    s.add_argument("--offline", action="store_true",
                   help="use the stored lease as it is, without asking its host")
    s.add_argument("ssh_args", nargs="*", metavar="SSH_ARG",
                   help="more ssh options, after --")
    wallet_opt(s)
    json_opt(s)
    t = sub.add("tunnel", "Pipe stdin and stdout to a lease's SSH port (ssh's "
                "ProxyCommand).", TUNNEL_EXAMPLES, tunnel_cmd)
    t.add_argument("lease", metavar="LEASE", help="lease id")
    wallet_opt(t)


def program() -> list[str]:
    """How ssh's ProxyCommand runs p2pmarket: the command on the PATH, else this
    Python's module."""
    return ["p2pmarket"] if shutil.which("p2pmarket") else [sys.executable, "-m",
                                                             "p2pmarket"]


async def ssh_cmd(args: argparse.Namespace) -> int:
    access = await current_access(wallet_dir(args), args.lease, net_of(args),
                                  refresh=not args.offline)
    tunnel = tunnel_argv(access.lease_id, str(args.wallet) if args.wallet else None,
                         args.http_proxy, program())
    argv = ssh_argv(access, user=args.user, tunnel=tunnel, identity_file=args.identity_file,
                    extra=args.ssh_args)
    if args.print_only:
        if args.json:
            dump({"lease_id": access.lease_id, "reach": access.reach,
                  "address": access.address, "port": access.port, "argv": argv,
                  "command": shlex.join(argv)})
        else:
            print(shlex.join(argv))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    exec_ssh(argv)


def exec_ssh(argv: list[str]) -> NoReturn:
    """Replace this process by ``ssh`` (:class:`SshError` if it cannot be run)."""
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise SshError(f"cannot run ssh: {exc.strerror or exc}", argv[0]) from None


async def tunnel_cmd(args: argparse.Namespace) -> int:
    """Nothing but the stream goes to stdout; errors go to stderr."""
    wdir = wallet_dir(args)
    access = await current_access(wdir, args.lease, net_of(args), refresh=False)
    await run_tunnel(access, wdir.identity(), await stdio(), net_of(args))
    return 0
