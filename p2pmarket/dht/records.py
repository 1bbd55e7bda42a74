"""Signed DHT records: key names and host records (docs/design.md section 3). Pure: no
I/O, no clock.

Key names and the values stored under them (kademlia stores ``sha1(key name)``):

- ``host/<node id hex>``: one signed envelope of kind ``dht.host``, encoded
  (:meth:`Envelope.encode`). Body ``{key, node_id, url, dht: [host, port],
  resources: {type: {capacity, price, hour_avg}}, availability_ppm, seq,
  expires}`` plus, optionally, ``doc: {sha256, size}`` (a larger document the
  owner serves over HTTP at ``<url>/dht/doc/<sha256 hex>``; readers check it
  against the hash) and ``reach: [attestation bytes, ...]`` (registrars'
  reachability attestations, section 7, carried opaquely) and ``images: [{name,
  format, virtual_size, sha256}, ...]`` (the named base images the host copies into
  an account's disk on ``host.use_image``: at most :data:`MAX_IMAGES`, names unique
  and matching :data:`IMAGE_NAME_RE`, ``format`` ``raw`` or ``qcow2``,
  ``virtual_size`` 1 .. 2^50 bytes, ``sha256`` 32 bytes) and ``vm: {driver,
  memory_kib, ssh_ports}`` (what a machine bought here is: the VMM driver, e.g.
  ``qemu``, ``lxc``, ``test``; the memory a bundle without a memory bid gets, 16
  MiB .. 2^40 KiB; the ``tcp_port`` range leased for SSH to guests, ``LO-HI`` or one
  port, or "" none: :class:`VmAd`). Only the key whose
  node id is ``node_id`` may sign it; a higher ``seq`` replaces a lower one.
  Each capacity must be within its type's plausible maximum and each ``price``
  from 1 to 2^62 (:mod:`p2pmarket.core.limits`, :func:`check_capacity`,
  :func:`check_price`); ``hour_avg`` from 0 to 2^62. A record outside is refused
  (``implausible``).
- ``offers/<resource type>/<band>[/<hex>]``: the shards of the offer index, multi-writer
  sets of signed offer entries (:mod:`p2pmarket.dht.offershards`,
  :mod:`p2pmarket.dht.offers`).
- ``evidence/<node id hex>``: a multi-writer set of proofs of misbehaviour
  (:mod:`p2pmarket.dht.evidence_records`).

Host records and offer entries are signed in the ``dht.record`` signature domain
(:data:`p2pmarket.core.domains.DHT_RECORD`): the same key's RPCs or leases are no
records. Both sets are stored as a container ``{kind, key, entries}`` (canonical
msgpack).
The checks every kind shares (sizes, container, fields, signature, times) are in
:mod:`p2pmarket.dht.checks`; :func:`url_host` (per-prefix caps) is here. All
times are integer microseconds; ``now_us`` always comes in as an argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity
from p2pmarket.core.limits import MAX_PRICE, capacity_problem, price_problem
from p2pmarket.core.wire import Envelope, seal
from p2pmarket.dht.checks import (
    check_body,
    check_int,
    check_owner,
    check_signature,
    check_size,
    check_str,
    check_times,
    open_envelope,
    refusal,
)

HOST_KIND = "dht.host"

MAX_RESOURCES = 16
MAX_URL = 256
MAX_HOSTNAME = 253
PPM = 1_000_000

_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")

HOST_FIELDS = frozenset(
    {"key", "node_id", "url", "dht", "resources", "availability_ppm", "seq", "expires"})
HOST_OPTIONAL = frozenset({"doc", "reach", "images", "vm"})
VM_FIELDS = frozenset({"driver", "memory_kib", "ssh_ports"})
VM_DRIVER_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
SSH_PORTS_RE = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")
DOC_FIELDS = frozenset({"sha256", "size"})
MAX_DOC_BYTES = 4 * 1024 * 1024
"""Largest document a host record may point to (fetched over HTTP, not the DHT)."""
MAX_REACH = 4
MAX_ATTESTATION = 512
RESOURCE_FIELDS = frozenset({"capacity", "price", "hour_avg"})
IMAGE_FIELDS = frozenset({"name", "format", "virtual_size", "sha256"})
IMAGE_FORMATS = frozenset({"raw", "qcow2", "tar", "tar.gz"})   # tar*: a container root
IMAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
MAX_IMAGES = 8
MAX_IMAGE_BYTES = 1 << 50


# -- key names ---------------------------------------------------------------

def host_key(node_id: bytes) -> str:
    return f"host/{node_id.hex()}"


def evidence_key(node_id: bytes) -> str:
    return f"evidence/{node_id.hex()}"


def key_digest(key: str) -> bytes:
    """The 160-bit kademlia key of a key name (what ``kademlia.utils.digest`` computes)."""
    return hashlib.sha1(key.encode("utf-8")).digest()


def check_type_name(resource_type: object) -> str:
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise refusal("bad_type", f"bad resource type name {resource_type!r:.40}")
    return resource_type


def check_capacity(resource_type: str, value: object) -> int:
    """An advertised capacity: an integer (else ``malformed``) within the plausible
    maximum for its type (:mod:`p2pmarket.core.limits`; else ``implausible``)."""
    capacity = check_int(value, f"{resource_type} capacity")
    problem = capacity_problem(resource_type, capacity)
    if problem is not None:
        raise refusal("implausible", problem)
    return capacity


def check_price(value: object) -> int:
    """An advertised price: an integer (else ``malformed``) from ``MIN_PRICE`` to
    ``MAX_PRICE`` (:mod:`p2pmarket.core.limits`; else ``implausible``)."""
    price = check_int(value, "price")
    problem = price_problem(price)
    if problem is not None:
        raise refusal("implausible", problem)
    return price


# -- host records ------------------------------------------------------------

@dataclass(frozen=True)
class ResourceAd:
    """One advertised resource type: capacity in base units, prices in µcredits."""

    capacity: int
    price: int
    hour_avg: int

    def to_doc(self) -> dict[str, int]:
        return {"capacity": self.capacity, "price": self.price, "hour_avg": self.hour_avg}


@dataclass(frozen=True)
class DocRef:
    """A document too large for a DHT value: its SHA-256 and size in bytes."""

    sha256: bytes
    size: int

    def to_doc(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, data: bytes) -> DocRef:
        return cls(hashlib.sha256(data).digest(), len(data))

    def check(self, data: bytes) -> bytes:
        """``data`` if it is the document named here, else
        :class:`~p2pmarket.dht.checks.DhtError` ``doc_mismatch``."""
        if len(data) != self.size or hashlib.sha256(data).digest() != self.sha256:
            raise refusal("doc_mismatch", "document does not match the hash in its record")
        return data


def _doc_ref(value: object) -> DocRef | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != DOC_FIELDS:
        raise refusal("malformed", "doc must be {sha256, size}")
    digest = value["sha256"]
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise refusal("malformed", "doc sha256 must be 32 bytes")
    return DocRef(digest, check_int(value["size"], "doc size", 0, MAX_DOC_BYTES))


def _reach(value: object) -> tuple[bytes, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_REACH or not all(
            isinstance(a, bytes) and 0 < len(a) <= MAX_ATTESTATION for a in value):
        raise refusal("malformed", f"reach must be at most {MAX_REACH} attestations")
    return tuple(value)


@dataclass(frozen=True)
class ImageAd:
    """A named base image a host offers: its format, the size the guest sees (bytes)
    and the SHA-256 of its file."""

    name: str
    format: str
    virtual_size: int
    sha256: bytes

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "virtual_size": self.virtual_size,
                "sha256": self.sha256}


def check_image_name(name: object) -> str:
    """A base image's name: lower-case letters, digits, ``.``, ``_``, ``-``, 1..48."""
    if not isinstance(name, str) or not IMAGE_NAME_RE.match(name):
        raise refusal("malformed", f"bad image name {name!r:.60}")
    return name


def _images(value: object) -> tuple[ImageAd, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_IMAGES:
        raise refusal("malformed", f"images must be a list of at most {MAX_IMAGES}")
    out: list[ImageAd] = []
    for doc in value:
        if not isinstance(doc, dict) or set(doc) != IMAGE_FIELDS:
            raise refusal("malformed", "image must be {name, format, virtual_size, sha256}")
        if doc["format"] not in IMAGE_FORMATS:
            raise refusal("malformed", "image format must be raw, qcow2, tar or tar.gz")
        digest = doc["sha256"]
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise refusal("malformed", "image sha256 must be 32 bytes")
        out.append(ImageAd(check_image_name(doc["name"]), doc["format"],
                           check_int(doc["virtual_size"], "image virtual_size", 1,
                                     MAX_IMAGE_BYTES), digest))
    if len({i.name for i in out}) != len(out):
        raise refusal("malformed", "image names must be unique")
    return tuple(out)


@dataclass(frozen=True)
class VmAd:
    """What a machine bought at a host is (see the module docstring)."""

    driver: str
    memory_kib: int
    ssh_ports: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {"driver": self.driver, "memory_kib": self.memory_kib,
                "ssh_ports": self.ssh_ports}

    def port_range(self) -> tuple[int, int] | None:
        """The leased SSH ports ``(lo, hi)``, None when the host leases none."""
        m = SSH_PORTS_RE.match(self.ssh_ports)
        return None if m is None else (int(m[1]), int(m[2] or m[1]))


def _vm(value: object) -> VmAd | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != VM_FIELDS:
        raise refusal("malformed", "vm must be {driver, memory_kib, ssh_ports}")
    driver, ports = value["driver"], value["ssh_ports"]
    if not isinstance(driver, str) or not VM_DRIVER_RE.match(driver):
        raise refusal("malformed", f"bad vm driver {driver!r:.30}")
    memory = check_int(value["memory_kib"], "vm memory_kib", 16 * 1024, 1 << 40)
    if not isinstance(ports, str):
        raise refusal("malformed", "vm ssh_ports must be a string")
    ad = VmAd(driver, memory, ports)
    span = ad.port_range()
    if ports and (span is None or not 1 <= span[0] <= span[1] <= 65535
                  or span[1] - span[0] >= 4096):
        raise refusal("malformed", f"bad vm ssh_ports {ports!r:.30}")
    return ad


@dataclass(frozen=True)
class HostRecord:
    """A verified ``host/<id>`` record. ``resources`` must not be mutated."""

    key: str
    node_id: bytes
    url: str
    dht: tuple[str, int]
    resources: Mapping[str, ResourceAd]
    availability_ppm: int
    seq: int
    expires: int
    envelope: Envelope
    doc: DocRef | None = None
    reach: tuple[bytes, ...] = ()
    images: tuple[ImageAd, ...] = ()
    vm: VmAd | None = None

    def image(self, name: str) -> ImageAd | None:
        """The base image named ``name`` this host offers, None if none."""
        return next((i for i in self.images if i.name == name), None)

    @cached_property
    def value(self) -> bytes:
        """The bytes stored in the DHT."""
        return self.envelope.encode()

    @property
    def doc_url(self) -> str | None:
        """Where the owner serves the document named in ``doc``."""
        if self.doc is None:
            return None
        return f"{self.url.rstrip('/')}/dht/doc/{self.doc.sha256.hex()}"

    @classmethod
    def from_envelope(cls, env: Envelope, now_us: int) -> HostRecord:
        body = check_body(env, HOST_KIND, HOST_FIELDS, HOST_OPTIONAL)
        node_id = check_owner(env, body)
        if body["key"] != host_key(node_id):
            raise refusal("wrong_key", "host record key does not name its node")
        url = check_str(body["url"], "url", MAX_URL)
        dht = body["dht"]
        if not isinstance(dht, list) or len(dht) != 2:
            raise refusal("malformed", "dht must be [host, port]")
        dht_addr = (check_str(dht[0], "dht host", MAX_HOSTNAME),
                    check_int(dht[1], "dht port", 1, 65535))
        resources_doc = body["resources"]
        if not isinstance(resources_doc, dict) or len(resources_doc) > MAX_RESOURCES:
            raise refusal("malformed", f"resources must be a map of at most {MAX_RESOURCES}")
        resources: dict[str, ResourceAd] = {}
        for rtype, ad in resources_doc.items():
            check_type_name(rtype)
            if not isinstance(ad, dict) or set(ad) != RESOURCE_FIELDS:
                raise refusal("malformed", "resource must be {capacity, price, hour_avg}")
            resources[rtype] = ResourceAd(
                check_capacity(rtype, ad["capacity"]), check_price(ad["price"]),
                check_int(ad["hour_avg"], "hour_avg", 0, MAX_PRICE))
        availability = check_int(body["availability_ppm"], "availability_ppm", 0, PPM)
        seq = check_int(body["seq"], "seq")
        doc = _doc_ref(body.get("doc"))
        reach = _reach(body.get("reach"))
        images = _images(body.get("images"))
        vm = _vm(body.get("vm"))
        expires = check_times(env, body["expires"], now_us)
        check_signature(env)
        return cls(key=body["key"], node_id=node_id, url=url, dht=dht_addr,
                   resources=resources, availability_ppm=availability, seq=seq,
                   expires=expires, envelope=env, doc=doc, reach=reach, images=images,
                   vm=vm)

    @classmethod
    def from_bytes(cls, value: object, now_us: int) -> HostRecord:
        return cls.from_envelope(open_envelope(value), now_us)


def make_host_record(identity: Identity, *, url: str, dht: tuple[str, int],
                     resources: Mapping[str, ResourceAd], availability_ppm: int, seq: int,
                     now_us: int, ttl_us: int, doc: DocRef | None = None,
                     reach: Iterable[bytes] = (), images: Iterable[ImageAd] = (),
                     vm: VmAd | None = None) -> HostRecord:
    """Sign a host record valid from ``now_us`` for ``ttl_us``; validated like a received one."""
    body: dict[str, Any] = {
        "key": host_key(identity.node_id),
        "node_id": identity.node_id,
        "url": url,
        "dht": [dht[0], dht[1]],
        "resources": {t: ad.to_doc() for t, ad in resources.items()},
        "availability_ppm": availability_ppm,
        "seq": seq,
        "expires": now_us + ttl_us,
    }
    if doc is not None:
        body["doc"] = doc.to_doc()
    reach = list(reach)
    if reach:
        body["reach"] = reach
    offered = [i.to_doc() for i in images]
    if offered:
        body["images"] = offered
    if vm is not None:
        body["vm"] = vm.to_doc()
    record = HostRecord.from_envelope(seal(identity, DHT_RECORD, HOST_KIND, body, ts=now_us),
                                      now_us)
    check_size(record.value)
    return record


def newer_host(a: HostRecord, b: HostRecord) -> HostRecord:
    """The record that wins: higher seq, then (same seq) the larger encoding, for determinism."""
    if a.seq != b.seq:
        return a if a.seq > b.seq else b
    return a if a.value >= b.value else b


def host_doc(record: HostRecord) -> dict[str, Any]:
    """A plain, JSON-friendly view of a host record (for the CLI and the control API)."""
    doc: dict[str, Any] = {
        "node_id": record.node_id.hex(), "url": record.url, "dht": list(record.dht),
        "resources": {t: ad.to_doc() for t, ad in record.resources.items()},
        "availability_ppm": record.availability_ppm, "seq": record.seq,
        "expires": record.expires, "attestations": len(record.reach),
        "images": [{**i.to_doc(), "sha256": i.sha256.hex()} for i in record.images],
        "vm": None if record.vm is None else record.vm.to_doc()}
    if record.doc is not None:
        doc["doc"] = {"sha256": record.doc.sha256.hex(), "size": record.doc.size,
                      "url": record.doc_url}
    return doc


def url_host(url: str) -> str:
    """The host part of an ``http://host:port/...`` URL (for per-prefix caps)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
