"""The libvirt VMM backend: ``test:///default``, ``qemu:///system`` and ``lxc:///``.

``test:///default`` (libvirt's in-process test driver, shared by every
connection in one process) is the embedded default. Domains are named
``<prefix><account id>``; the prefix is host-specific so several hosts can
share one hypervisor.

How a :class:`DomainSpec` is enforced, and the drivers' differences it hides:

- CPU share: ``cpu_shares`` (qemu, lxc: the cgroup's cpu.shares/cpu.weight) or
  ``weight`` (test, Xen), found in ``schedulerParameters()``. The test driver
  accepts a new weight but keeps reporting 50: the requested value is kept in
  the domain's metadata and the status says it was not enforced.
- vcpus and memory change live (``AFFECT_LIVE``, then ``AFFECT_CONFIG``
  separately: the test driver refuses both flags at once); memory cannot grow
  past the ``<memory>`` (max) set at define time, so a larger request is
  clamped and noted. Memory shrinks through the balloon: a guest without a
  balloon driver keeps its memory (qemu reports what the guest gave back).
- Block I/O weight: ``<blkiotune><weight>`` at define time, ``setBlkioParameters``
  live; where the kernel has no blkio weight (e.g. cgroup v1 without BFQ) the
  error is noted.
- Bandwidth: ``<bandwidth>`` on the domain's interface, ``setInterfaceParameters``
  live; it needs an interface on a libvirt network (``network``; the test
  driver's ``default``), and on real hosts tc with the sfq/htb qdiscs. Without
  an interface, net_in/net_out are noted as not enforced.
- Disk: the account's volume ``<prefix><account id>.img`` (raw) or ``.qcow2`` in the
  storage pool (``pool``; created as a directory pool under ``pool_path`` if missing)
  is the domain's first disk, its driver type the format named by the volume's name
  (what the host's check found at upload; never probed from the bytes, which the
  guest may rewrite). Uploads stream into it with ``virStorageVolUpload`` (the test
  driver cannot: it says so); the volume is created raw (no ``qemu-img`` needed) and
  the bytes are the image, whatever its format.
- ``boot``: optional direct kernel boot ``{kernel, initrd, cmdline}`` for
  domains without an image (used by the qemu integration test).
- Guests (:meth:`LibvirtVMM.prepare_guest`): what to boot (a :class:`GuestBoot`:
  the volume, qcow2 or raw as its header says, or a host kernel), the NoCloud
  seed with the buyer's key as an IDE cdrom, and a static DHCP address on the
  project's NAT network (``network="auto"``: :mod:`.guestnet`, never libvirt's
  ``default``); the domain XML itself is built by :mod:`.domainxml`.
- Containers (``lxc:///``): the account's volume is a root file system archive
  (``.tar``, ``.tar.gz``: :mod:`p2pmarket.auction.rootfscheck`), unpacked into a
  directory of its own under ``lxc_root_dir`` before the container starts, the
  buyer's key written into it (:mod:`.lxcroot`); the domain XML is
  :func:`.lxcguest.lxc_domain_xml` (a user namespace, the static address configured
  by libvirt). vcpus are not changed live there (the driver cannot): noted.

A stopped domain is redefined with the new spec when it is started again. All
calls block; the auctioneer runs them in a thread.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Any

import libvirt

from p2pmarket.auction import HostError
from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm import network as guestnets
from p2pmarket.host.vmm.base import VMM, Usage, VmInfo, VmmError, VolumeInfo
from p2pmarket.host.vmm.domainxml import (
    META_KEY,
    META_URI,
    MIN_CPU_SHARES,
    DomainPlan,
    check_cpuset,
    domain_xml,
    guest_from_xml,
    meta_element,
)
from p2pmarket.host.vmm.guest import (
    GuestBoot,
    parse_ssh_key,
    seed_files,
)
from p2pmarket.host.vmm.guestnet import GuestNetwork, mac_for
from p2pmarket.host.vmm.lxcguest import authorized_keys, id_base, lxc_domain_xml
from p2pmarket.host.vmm.lxcroot import LxcRoots
from p2pmarket.host.vmm.usage import read_usage
from p2pmarket.host.vmm.volumes import RAW, VolumesMixin, libvirt_message, vol_format

_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
           5: "shutoff", 6: "crashed", 7: "pmsuspended"}
_WEIGHT_KEYS = ("cpu_shares", "weight")
_DOMAIN_TYPES = {"TEST": "test", "QEMU": "qemu", "LXC": "lxc"}
_META_FIELDS = ("vcpus", "memory_kib", "weight", "blkio", "net_in", "net_out")
DEFAULT_POOL_PATH = "/var/lib/libvirt/images/p2pmarket"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"
SEED_SUFFIX = "-seed.iso"
DEFAULT_LXC_ROOTS = "/var/lib/p2pmarket/lxc"

_quiet_installed = False


def _quiet() -> None:
    """Stop libvirt printing every (expected, handled) error on stderr."""
    global _quiet_installed
    if not _quiet_installed:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _quiet_installed = True



class LibvirtVMM(VolumesMixin, VMM):
    def __init__(self, uri: str = "test:///default", prefix: str = "p2pm-",
                 network: str | None = "auto", pool: str | None = "auto",
                 pool_path: str = DEFAULT_POOL_PATH,
                 boot: Mapping[str, str] | None = None,
                 guest_network: GuestNetwork | None = None,
                 serial_log_dir: str | None = SERIAL_LOG_DIR,
                 guest_cpuset: str | None = None,
                 lxc_root_dir: str | None = None) -> None:
        _quiet()
        if not prefix or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_" for c in prefix):
            raise VmmError("domain prefix must be lower-case letters, digits, - or _", prefix)
        self.uri = uri
        self.prefix = prefix
        self.pool_path = pool_path
        self.boot = GuestBoot(boot.get("kernel"), boot.get("initrd"),
                              boot.get("cmdline")) if boot else None
        self.guest_net = guest_network or GuestNetwork()
        self.network_error: str | None = None
        self.serial_log_dir = serial_log_dir
        try:
            self.cpuset = check_cpuset(guest_cpuset) if guest_cpuset else None
        except ValueError as exc:
            raise VmmError(str(exc), guest_cpuset) from None
        self._guests: dict[str, tuple[GuestBoot, str | None]] = {}
        self.lxc = LxcRoots(lxc_root_dir or DEFAULT_LXC_ROOTS)
        self._lock = threading.RLock()
        try:
            self.conn = libvirt.open(uri)
            self.driver = str(self.conn.getType()).upper()
            self._host_cpus = int(self.conn.getInfo()[2])
        except libvirt.libvirtError as exc:
            raise VmmError(f"cannot open {uri}: {libvirt_message(exc)}", uri) from None
        if self.driver not in _DOMAIN_TYPES:
            raise VmmError(f"unsupported libvirt driver {self.driver}", self.driver)
        self.network = self._pick_network(network)
        self.pool_name = ("default-pool" if self.driver == "TEST" else "p2pmarket") \
            if pool == "auto" else pool

    def _pick_network(self, network: str | None) -> str | None:
        """``auto``: the project's own NAT network (:mod:`.guestnet`), defined and
        started if needed; None when it cannot start (the reason is noted).
        libvirt's ``default`` network is never used."""
        if network == "default":
            raise VmmError("libvirt's default network (192.168.122.0/24) is not used: "
                           "leave network='auto' for the project's own", network)
        if network != "auto":
            return network
        try:
            guestnets.ensure_network(self.conn, self.guest_net)
        except VmmError as exc:
            self.network_error = exc.args[0] if exc.args else str(exc)
            return None
        return self.guest_net.name

    @property
    def image_kind(self) -> str:
        """``rootfs`` (containers boot a root file system archive) or ``disk``."""
        return "rootfs" if self.driver == "LXC" else "disk"

    @property
    def max_vcpus(self) -> int:
        return max(1, self._host_cpus)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def name_of(self, account_id: str) -> str:
        if not account_id or not all(c.isalnum() or c in "-_" for c in account_id):
            raise VmmError("bad account id for a domain name", account_id[:40])
        return self.prefix + account_id

    # -- domains -------------------------------------------------------------------

    def apply(self, account_id: str, spec: DomainSpec) -> VmInfo:
        if spec.vcpus < 1 or spec.memory_kib < 1 or spec.cpu_weight < 1:
            raise VmmError("a domain needs at least 1 vcpu, 1 KiB and weight 1",
                           {"vcpus": spec.vcpus, "memory_kib": spec.memory_kib,
                            "weight": spec.cpu_weight})
        vcpus = min(spec.vcpus, self.max_vcpus)
        name = self.name_of(account_id)
        want = {"vcpus": vcpus, "memory_kib": spec.memory_kib, "weight": spec.cpu_weight,
                "blkio": spec.blkio_weight or 0, "net_in": spec.net_in_kib_s or 0,
                "net_out": spec.net_out_kib_s or 0}
        with self._lock:
            try:
                dom = self._lookup(name)
                if dom is None or not dom.isActive():
                    plan = self._plan(account_id, dom, spec, vcpus, want)
                    dom = self.conn.defineXML(self._lxc_xml(account_id, plan, spec)
                                              if self.driver == "LXC" else domain_xml(plan))
                    dom.create()
                else:
                    self._update_live(dom, vcpus, spec.memory_kib)
                    self._set_meta(dom, want)
                self._set_weight(dom, spec.cpu_weight)
                self._set_blkio(dom, spec.blkio_weight)
                self._set_bandwidth(dom, spec.net_in_kib_s, spec.net_out_kib_s)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", name) from None
            return self._info(dom, account_id)

    def ensure_domain(self, account_id: str, vcpus: int, memory_kib: int, cpu_weight: int,
                      max_memory_kib: int | None = None) -> VmInfo:
        """Shorthand for :meth:`apply` with cpu and memory only."""
        return self.apply(account_id, DomainSpec(vcpus, memory_kib, cpu_weight,
                                                 max_memory_kib or memory_kib))

    def shutdown(self, account_id: str) -> None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                if dom is not None and dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None

    def undefine(self, account_id: str) -> None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                if dom is not None:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None
            self.release_guest(account_id)
            self.delete_volume(account_id)
            self.lxc.forget(self.name_of(account_id))

    def describe(self, account_id: str) -> VmInfo | None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                return None if dom is None else self._info(dom, account_id)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None

    def usage(self, account_id: str) -> Usage | None:
        """What the account's domain really uses now (:mod:`.usage`), None without one."""
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                return None if dom is None else read_usage(dom)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None

    def list(self) -> list[VmInfo]:
        with self._lock:
            try:
                doms = [d for d in self.conn.listAllDomains() if d.name().startswith(self.prefix)]
                return sorted((self._info(d, d.name()[len(self.prefix):]) for d in doms),
                              key=lambda i: i.name)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", self.uri) from None

    # -- guests: boot, key, address ------------------------------------------------

    def prepare_guest(self, account_id: str, boot: GuestBoot, ssh_key: str) -> str | None:
        """Set what the account's guest boots and the key it accepts; its address.

        Checks the key (:func:`parse_ssh_key`: a bad one is a ``GuestError``),
        writes the NoCloud seed as the volume ``<domain>-seed.iso`` in the pool,
        and reserves the guest's static DHCP address on the project network.
        The next :meth:`apply` defines the domain with it; a running domain is
        stopped so that the next sync restarts it so. A container's key goes into its
        root instead (:class:`.lxcroot.LxcRoots`), live: it keeps running. Returns the
        guest's address (None without the project network)."""
        name = self.name_of(account_id)
        key = parse_ssh_key(ssh_key)
        with self._lock:
            try:
                pool = self._pool(create=True)
                dom = self._lookup(name)
                seed = None
                if self.driver == "LXC":   # into the root itself, live: no restart
                    self.lxc.set_key(name, authorized_keys(key), id_base(name))
                else:
                    # pycdlib (2.5 MB resident) only once a guest gets a key
                    from p2pmarket.host.vmm.seediso import store_seed

                    if dom is not None and dom.isActive():
                        dom.destroy()
                    seed = store_seed(self.conn, pool, name + SEED_SUFFIX,
                                      seed_files(name, key), streams=self.driver != "TEST")
                address = None
                if self.network == self.guest_net.name:
                    address = guestnets.reserve(self.conn, self.guest_net, mac_for(name))
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", name) from None
            self._guests[account_id] = (boot, seed)
            return address

    def guest_address(self, account_id: str) -> str | None:
        """The guest's IPv4 address on the project network, None when unknown."""
        if self.network != self.guest_net.name:
            return None
        with self._lock:
            return guestnets.address(self.conn, self.guest_net,
                                     mac_for(self.name_of(account_id)))

    def console_log(self, account_id: str) -> str | None:
        """Where the guest's serial console is logged (qemu), None elsewhere."""
        if self.driver != "QEMU" or self.serial_log_dir is None:
            return None
        return f"{self.serial_log_dir}/{self.name_of(account_id)}-serial.log"

    def release_guest(self, account_id: str) -> None:
        """Forget the guest's boot settings, seed and address (no-op when none)."""
        name = self.name_of(account_id)
        with self._lock:
            self._guests.pop(account_id, None)
            if self.network == self.guest_net.name:
                guestnets.release(self.conn, self.guest_net, mac_for(name))
            pool = self._pool(create=False)
            if pool is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.storageVolLookupByName(name + SEED_SUFFIX).delete(0)

    def _lxc_xml(self, account_id: str, plan: DomainPlan, spec: DomainSpec) -> str:
        """A container's XML, its root unpacked from the volume first if need be."""
        vol = self._volume(account_id)
        try:
            root = self.lxc.ready(plan.name, None if vol is None else str(vol.path()),
                                  (spec.disk_kib or 0) * 1024, id_base(plan.name))
        except (HostError, OSError) as exc:
            raise VmmError(f"lxc root: {exc}", plan.name) from None
        address = None   # reserved here: a container may start before its key comes
        if self.network == self.guest_net.name:
            address = guestnets.reserve(self.conn, self.guest_net, mac_for(plan.name))
        return lxc_domain_xml(plan, str(root), address,
                              self.guest_net if address else None, id_base(plan.name))

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = "raw") -> VolumeInfo:
        """As :meth:`VolumesMixin.upload_volume`; a container's old root goes with it
        (unpacked from the new archive on the next start)."""
        if self.driver == "LXC":
            self.shutdown(account_id)
            self.lxc.drop_root(self.name_of(account_id))
        return super().upload_volume(account_id, size, chunks, fmt)

    def _plan(self, account_id: str, dom: Any, spec: DomainSpec, vcpus: int,
              want: dict[str, int]) -> DomainPlan:
        """The domain to define: the prepared guest, or what the stopped domain
        booted (a host restart), or the legacy ``boot`` for a domain without disk."""
        name = self.name_of(account_id)
        vol = self._volume(account_id)
        disk = None if vol is None else str(vol.path())
        boot, seed = self._guests.get(account_id, (None, None))
        if boot is None and dom is not None:
            boot, seed = guest_from_xml(dom.XMLDesc(0))
        if boot is None and disk is None:
            boot = self.boot
        # the format the upload checked, kept in the volume's name: never probed from
        # bytes the guest may have rewritten (a raw disk made to look like a qcow2)
        fmt = RAW if vol is None else vol_format(vol.name())
        return DomainPlan(
            dtype=_DOMAIN_TYPES[self.driver], name=name, spec=spec, vcpus=vcpus,
            max_vcpus=self.max_vcpus, want=want,
            uuid=None if dom is None else dom.UUIDString(), disk=disk, disk_format=fmt,
            boot=boot, seed=seed, network=self.network,
            mac=None if self.network is None else mac_for(name),
            serial_log=self.console_log(account_id), cpuset=self.cpuset)

    # -- helpers -------------------------------------------------------------------

    def _lookup(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _update_live(self, dom: Any, vcpus: int, memory_kib: int) -> None:
        live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        memory_kib = min(memory_kib, int(dom.maxMemory()))
        if int(dom.info()[2]) != memory_kib:
            dom.setMemoryFlags(memory_kib, live)
            dom.setMemoryFlags(memory_kib, config)
        if self.driver != "LXC" and int(dom.vcpusFlags(live)) != vcpus:
            dom.setVcpusFlags(vcpus, live)
            dom.setVcpusFlags(vcpus, config)

    def _weight_key(self, dom: Any) -> str | None:
        try:
            params = dom.schedulerParameters()
        except libvirt.libvirtError:
            return None
        return next((k for k in _WEIGHT_KEYS if k in params), None)

    def _set_weight(self, dom: Any, weight: int) -> None:
        key = self._weight_key(dom)
        if key == "cpu_shares":
            weight = max(MIN_CPU_SHARES, weight)
        if key is not None and int(dom.schedulerParameters()[key]) != weight:
            dom.setSchedulerParameters({key: weight})

    def _set_blkio(self, dom: Any, weight: int | None) -> None:
        if weight is None:
            return
        try:
            if int(dom.blkioParameters(0).get("weight", 0)) != weight:
                dom.setBlkioParameters({"weight": weight}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            pass   # noted by _info: the weight in force differs from the one asked

    def _set_bandwidth(self, dom: Any, inbound: int | None, outbound: int | None) -> None:
        if self.network is None or not (inbound or outbound):
            return
        params = {}
        if inbound:
            params["inbound.average"] = inbound
        if outbound:
            params["outbound.average"] = outbound
        try:
            now = dom.interfaceParameters(mac_for(dom.name()), 0)
            if any(int(now.get(k, 0)) != v for k, v in params.items()):
                dom.setInterfaceParameters(mac_for(dom.name()), params,
                                           libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            pass   # noted by _info

    def _set_meta(self, dom: Any, want: dict[str, int]) -> None:
        text = ET.tostring(meta_element(want, namespaced=False), encoding="unicode")
        flags = [libvirt.VIR_DOMAIN_AFFECT_CONFIG]
        if dom.isActive():
            flags.insert(0, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        for flag in flags:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, META_KEY, META_URI, flag)

    def _get_meta(self, dom: Any) -> dict[str, int]:
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, META_URI, 0)
        except libvirt.libvirtError:
            return {}
        el = ET.fromstring(text)
        out: dict[str, int] = {}
        for key in _META_FIELDS:
            value = el.get(key)
            if value is not None and value.isdigit():
                out[key] = int(value)
        return out

    def _info(self, dom: Any, account_id: str) -> VmInfo:
        state_code, max_mem, mem, vcpus, _cpu_time = dom.info()
        want = self._get_meta(dom)
        drv = self.driver.lower()
        notes: list[str] = []
        key = self._weight_key(dom)
        if key is None:
            weight, key = want.get("weight", 0), "none"
            notes.append(f"{drv} driver has no scheduler weight; cpu share not enforced")
        else:
            weight = int(dom.schedulerParameters()[key])
            asked = want.get("weight")
            if asked is not None and asked != weight:
                notes.append(f"{drv} driver ignored {key}={asked} "
                             f"(reports {weight}); cpu share not enforced")
                weight = asked
        asked_mem = want.get("memory_kib")
        if asked_mem is not None and asked_mem > int(max_mem):
            notes.append(f"memory clamped to the domain's max ({int(max_mem)} KiB)")
        blkio: int | None = None
        if want.get("blkio"):
            try:
                blkio = int(dom.blkioParameters(0).get("weight", 0))
            except libvirt.libvirtError as exc:
                notes.append(f"blkio weight not enforced: {libvirt_message(exc)}")
            if blkio is not None and blkio != want["blkio"]:
                notes.append(f"blkio weight {want['blkio']} not enforced (in force: {blkio})")
        net_in = net_out = None
        if want.get("net_in") or want.get("net_out"):
            if self.network is None:
                notes.append("no network interface: net_in/net_out bandwidth not enforced")
            else:
                try:
                    got = dom.interfaceParameters(mac_for(dom.name()), 0)
                    net_in = int(got.get("inbound.average", 0)) or None
                    net_out = int(got.get("outbound.average", 0)) or None
                except libvirt.libvirtError as exc:
                    notes.append(f"bandwidth not enforced: {libvirt_message(exc)}")
        if self.driver == "TEST":
            notes.append("test driver: no guest runs; limits are recorded, not enforced")
        if self.driver == "LXC":
            notes.append("lxc driver: the vcpu count is not enforced (cpu_shares is)")
        return VmInfo(name=dom.name(), account_id=account_id,
                      state=_STATES.get(int(dom.state()[0]), str(state_code)),
                      vcpus=int(vcpus), memory_kib=int(mem), max_memory_kib=int(max_mem),
                      weight=weight, weight_key=key, notes=tuple(notes), blkio_weight=blkio,
                      net_in_kib_s=net_in, net_out_kib_s=net_out)
