"""The fuzzing engine the targets share: hypothesis, time bounded, from a seed corpus.

Each target first replays its seeds (tests/fuzz/corpus/<target>/, written by
:mod:`tests.fuzz.make_corpus`; ``regress-*`` files are the inputs of bugs fuzzing
found), then runs hypothesis in rounds of :data:`ROUND` examples, with a fresh random
seed each round, until its time is up: ``P2PM_FUZZ_SECONDS`` per target (default
:data:`DEFAULT_SECONDS`; a long run by hand sets it to e.g. 600 and runs
``pytest tests/fuzz``). Inputs are the seeds
mutated byte-wise (:func:`mutated`: bit flips, interesting bytes, truncations,
insertions, deletions, duplications, splices), random bytes, and structured values
(:func:`values`, :func:`mutated_doc`) that the targets seal or frame as real messages.

A finding is an ``AssertionError``: hypothesis shrinks it and prints the input. The
checks every target makes: no exception escapes (:func:`no_errors_logged` also fails
an example when the code under test logged an error with a traceback), no reply
carries a traceback (:func:`no_traceback`), a refused input leaves the state digest
as it was.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"
DEFAULT_SECONDS = 10.0
ROUND = 60
T = TypeVar("T")


def budget_s() -> float:
    """The seconds each target fuzzes for (``P2PM_FUZZ_SECONDS``)."""
    return float(os.environ.get("P2PM_FUZZ_SECONDS", DEFAULT_SECONDS))


def seeds(target: str, ext: str = "") -> list[bytes]:
    """The seed corpus of ``target``, in a stable order."""
    files = sorted(p for p in (CORPUS / target).iterdir() if p.name.endswith(ext))
    out = [p.read_bytes() for p in files]
    assert out, f"no seeds in {CORPUS / target}: run python -m tests.fuzz.make_corpus"
    return out


def fuzz(strategy: st.SearchStrategy[T], check: Callable[[T], None],
         seconds: float | None = None, max_rounds: int = 100_000) -> int:
    """Run ``check`` on examples of ``strategy`` for ``seconds`` (the budget); the
    number of examples run."""
    deadline = time.monotonic() + (budget_s() if seconds is None else seconds)
    count = 0

    def counted(x: T) -> None:
        nonlocal count
        count += 1
        check(x)

    run = settings(max_examples=ROUND, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck),
                   phases=[Phase.generate, Phase.shrink])(given(strategy)(counted))
    rounds = 0
    while time.monotonic() < deadline and rounds < max_rounds:
        run()
        rounds += 1
    return count


# -- byte mutations ----------------------------------------------------------------

INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
               0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3, 0xd4, 0xd9, 0xda, 0xdb,
               0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x9f, 0x80, 0x8f, 0xa0, 0xbf, 0xe0]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes], max_ops: int = 6) -> bytes:
    """One of ``pool``, mutated by 1 .. ``max_ops`` byte-level operations."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 7))
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if op == 0 and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:
            data[pos] = draw(st.sampled_from(INTERESTING))
        elif op == 2:
            del data[draw(st.integers(0, n)):]
        elif op == 3:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4 and n:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == 5 and n:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        elif op == 6:
            other = draw(st.sampled_from(pool))
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + bytearray(other[cut:])
        elif op == 7 and n >= 4:   # a length or count field gone wrong
            data[pos:pos + 4] = draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
    return bytes(data)


def raw(pool: list[bytes], max_size: int = 512) -> st.SearchStrategy[bytes]:
    """Mostly mutated seeds, sometimes the seeds as they are or plain random bytes."""
    return st.one_of(mutated(pool), mutated(pool), mutated(pool), st.sampled_from(pool),
                     st.binary(max_size=max_size))


# -- structured values -----------------------------------------------------------

INTS = st.one_of(st.integers(-4, 70_000), st.sampled_from(
    [-(2**63), -(2**31), 2**31 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1,
     10**12, 10**15, 10**18]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.text(max_size=24),
                    st.binary(max_size=40), st.sampled_from([b"\x00" * 20, b"\x01" * 32,
                                                             b"\xff" * 64, "", "cpu",
                                                             "memory", "0" * 40]))


def values(keys: list[str] | None = None, floats: bool = False) -> st.SearchStrategy[Any]:
    """msgpack-able values: scalars, lists and maps (keys mostly from ``keys``)."""
    base = st.one_of(SCALARS, st.floats(allow_nan=True)) if floats else SCALARS
    names = st.sampled_from(keys) if keys else st.text(max_size=12)
    key = st.one_of(names, names, st.text(max_size=12))
    return st.recursive(base, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(key, inner, max_size=5)),
        max_leaves=12)


def _paths(doc: Any, prefix: tuple[Any, ...] = (), depth: int = 0
           ) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if depth > 6:
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k), depth + 1)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i), depth + 1)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_copy(v) for v in doc]
    return doc


ODD: list[Any] = [None, True, False, 0, -1, 1, 2**63 - 1, 2**64 - 1, -(2**63), "", b"",
                  [], {}, [None], {"": None}, "x" * 300, b"\x00" * 33, "\x00", "../" * 4,
                  "\u202e\ud7ff", "0" * 64]
"""Values of the wrong type or size: what a mutation swaps in most often."""


@st.composite
def mutated_doc(draw: st.DrawFn, doc: Any, keys: list[str], max_ops: int = 3) -> Any:
    """``doc`` with 1 .. ``max_ops`` structural changes: a value replaced (by one of
    :data:`ODD`, a random value, a boundary integer, a shorter or longer string, a bit
    flipped), a key dropped or added, a value wrapped in a list."""
    doc = _copy(doc)
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            if isinstance(doc, dict) and draw(st.booleans()):
                doc[draw(st.sampled_from(keys))] = draw(values(keys))
            continue
        parent, last = _get(doc, path[:-1]), path[-1]
        old = parent[last]
        op = draw(st.integers(-2, 5))
        if op < 0:
            parent[last] = _copy(draw(st.sampled_from(ODD)))   # later ops may change it
        elif op == 0:
            parent[last] = draw(values(keys))
        elif op == 1 and isinstance(parent, dict):
            del parent[last]
        elif op == 1:
            parent.pop(last)
        elif op == 2 and isinstance(old, bytes | str):
            cut = draw(st.integers(0, len(old)))
            parent[last] = old[:cut] if draw(st.booleans()) else old + old[:cut + 1]
        elif op == 3 and isinstance(old, int) and not isinstance(old, bool):
            parent[last] = draw(st.sampled_from([0, -1, old + 1, old - 1, -old, 2**63,
                                                 2**64 - 1, -(2**63), old * 2**20]))
        elif op == 4:
            parent[last] = [old]
        elif op == 5 and isinstance(old, bytes) and old:
            pos = draw(st.integers(0, len(old) - 1))
            parent[last] = old[:pos] + bytes([old[pos] ^ 1]) + old[pos + 1:]
    return doc


# -- checks ----------------------------------------------------------------------

TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/', ".py\", line ")


def no_traceback(value: Any, where: str = "reply") -> None:
    """Fail if any string (or UTF-8 bytes) in ``value`` looks like a traceback."""
    stack = [value]
    seen = 0
    while stack and seen < 100_000:
        v = stack.pop()
        seen += 1
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            assert not any(m in v for m in TRACEBACK_MARKS), f"traceback in {where}: {v[:400]}"
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list | tuple):
            stack += list(v)


class ErrorLog(logging.Handler):
    """Collects the records logged at ERROR or above, or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info
                                                else "") for r in self.records]
        self.records.clear()
        return out


@contextmanager
def error_log() -> Iterator[ErrorLog]:
    """An :class:`ErrorLog` on the root logger while the block runs."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def no_errors_logged(log: ErrorLog, what: Any) -> None:
    errors = log.take()
    assert not errors, f"errors logged for {what!r:.300}: {errors}"
