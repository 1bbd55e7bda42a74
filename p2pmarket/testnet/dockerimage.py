"""The compose testnet's image: a wheelhouse built on this machine, a build context, and
``docker build`` with the classic builder (``testnet/Dockerfile``).

No registry is reached at build time. The base is either an image the daemon has
(``--base python:3.11-slim`` where a registry was reachable once) or, by default, the
local Debian image that ``testnet/build-base`` makes with debootstrap (skipped when it
exists). The wheelhouse (p2pmarket's runtime dependencies, pinned to the versions of
the running interpreter's environment by ``pip freeze``, plus setuptools to build
p2pmarket in the image) is made once per set of pins under the cache dir::

    <cache>/wheels-<hash>/       *.whl and requirements.txt (pyproject's dependencies)
    <cache>/context/             Dockerfile, wheels/ (hard links), src/ (made anew)

Layers are cached by the daemon: with the same wheels and the same source a rebuild
takes a second or two; a source change rebuilds only the last layer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from p2pmarket.testnet.state import TestnetError

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "testnet" / "Dockerfile"
BUILD_BASE = REPO / "testnet" / "build-base"
LOCAL_BASE = "local"
"""The ``base`` that means: the image of ``testnet/build-base``."""
BUILD_TIMEOUT_S = 900.0
SRC_FILES = ("pyproject.toml", "README.md")


def cache_dir() -> Path:
    """``$P2PM_DOCKER_CACHE``, else ``~/.cache/p2pmarket/docker``."""
    env = os.environ.get("P2PM_DOCKER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "p2pmarket" / "docker"


def _run(argv: list[str], what: str, timeout_s: float = BUILD_TIMEOUT_S,
         env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestnetError(f"{what}: {exc}", argv) from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise TestnetError(f"{what} failed:\n{tail}", argv)
    return done.stdout


def requirements() -> list[str]:
    """p2pmarket's runtime dependencies, as pyproject.toml states them."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [str(d) for d in doc["project"]["dependencies"]]


def wheelhouse(cache: Path, python: str = sys.executable) -> Path:
    """The wheels of :func:`requirements` (pinned by ``pip freeze`` of ``python``'s
    environment) and setuptools; built once per set of pins."""
    pins = "".join(line + "\n" for line in _run(
        [python, "-m", "pip", "freeze", "--exclude-editable"], "pip freeze").splitlines()
        if line and not line.startswith(("p2pmarket", "-e ", "#")))
    reqs = requirements()
    key = hashlib.sha256(("\n".join(reqs) + "\0" + pins).encode()).hexdigest()[:12]
    wheels = cache / f"wheels-{key}"
    listing = wheels / "requirements.txt"
    if listing.exists():
        return wheels
    tmp = cache / f"wheels-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "constraints.txt").write_text(pins)
    _run([python, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp), "-c",
          str(tmp / "constraints.txt"), *reqs, "setuptools>=68", "wheel"],
         "pip wheel (the testnet image's wheelhouse)")
    (tmp / "requirements.txt").write_text("".join(r + "\n" for r in reqs))
    tmp.rename(wheels)
    return wheels


def context(cache: Path, wheels: Path) -> Path:
    """A fresh build context: the Dockerfile, the wheels, p2pmarket's source."""
    ctx = cache / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    shutil.copy2(DOCKERFILE, ctx / "Dockerfile")
    (ctx / "wheels").mkdir()
    for f in sorted(wheels.iterdir()):
        if f.suffix == ".whl" or f.name == "requirements.txt":
            os.link(f, ctx / "wheels" / f.name)
    src = ctx / "src"
    shutil.copytree(REPO / "p2pmarket", src / "p2pmarket",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SRC_FILES:
        shutil.copy2(REPO / name, src / name)
    return ctx


def base_image(base: str, docker: str) -> str:
    """The base image's tag: ``base`` itself, or for :data:`LOCAL_BASE` the one
    ``testnet/build-base`` prints (it builds it first if the daemon lacks it)."""
    if base != LOCAL_BASE:
        return base
    out = _run([str(BUILD_BASE)], "testnet/build-base", env={**os.environ, "DOCKER": docker})
    return out.strip().splitlines()[-1]


def build(image: str, base: str = LOCAL_BASE, docker: str = "docker",
          cache: Path | None = None, python: str = sys.executable) -> str:
    """Build (or find in the daemon's cache) the testnet image ``image`` on ``base``;
    returns its id."""
    cache = cache or cache_dir()
    base_tag = base_image(base, docker)
    ctx = context(cache, wheelhouse(cache, python))
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    out = _run([docker, "build", "-q", "--build-arg", f"BASE={base_tag}", "-t", image,
                str(ctx)], f"docker build of {image}", env=env)
    return out.strip().splitlines()[-1] if out.strip() else image
