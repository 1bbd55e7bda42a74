"""The libvirt VMM backend.

``test:///default`` (libvirt's in-process test driver, shared by every
connection in one process) is the embedded default. Domains are named
``<prefix><account id>``; the prefix is host-specific so several hosts can
share one hypervisor.

Differences the backend hides:

- the CPU scheduler weight is ``weight`` on the test (and Xen) driver and
  ``cpu_shares`` on qemu/lxc; the key is read from ``schedulerParameters()``.
  The test driver accepts ``setSchedulerParameters`` but keeps reporting 50:
  the requested weight is kept in the domain's metadata and ``describe`` says
  the driver did not enforce it.
- memory and vcpus are changed live on a running domain (``AFFECT_LIVE``, then
  ``AFFECT_CONFIG`` separately: the test driver refuses both flags at once);
  memory cannot grow past the ``<memory>`` (max) set at define time, so a
  larger request is clamped and noted. A shut-off domain is redefined instead.

All calls block; the auctioneer runs them in a thread.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError

META_URI = "https://p2pmarket.invalid/host"
META_KEY = "p2pmarket"
_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
           5: "shutoff", 6: "crashed", 7: "pmsuspended"}
_WEIGHT_KEYS = ("cpu_shares", "weight")
_DOMAIN_TYPES = {"TEST": "test", "QEMU": "qemu", "LXC": "lxc"}

_quiet_installed = False


def _quiet() -> None:
    """Stop libvirt printing every (expected, handled) error on stderr."""
    global _quiet_installed
    if not _quiet_installed:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _quiet_installed = True


class LibvirtVMM(VMM):
    def __init__(self, uri: str = "test:///default", prefix: str = "p2pm-") -> None:
        _quiet()
        if not prefix or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_" for c in prefix):
            raise VmmError("domain prefix must be lower-case letters, digits, - or _", prefix)
        self.uri = uri
        self.prefix = prefix
        self._lock = threading.RLock()
        try:
            self.conn = libvirt.open(uri)
            self.driver = str(self.conn.getType()).upper()
            self._host_cpus = int(self.conn.getInfo()[2])
        except libvirt.libvirtError as exc:
            raise VmmError(f"cannot open {uri}: {exc.get_error_message()}", uri) from None
        if self.driver not in _DOMAIN_TYPES:
            raise VmmError(f"unsupported libvirt driver {self.driver}", self.driver)

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

    # -- interface -----------------------------------------------------------------

    def ensure_domain(self, account_id: str, vcpus: int, memory_kib: int, cpu_weight: int,
                      max_memory_kib: int | None = None) -> VmInfo:
        if vcpus < 1 or memory_kib < 1 or cpu_weight < 1:
            raise VmmError("a domain needs at least 1 vcpu, 1 KiB and weight 1",
                           {"vcpus": vcpus, "memory_kib": memory_kib, "weight": cpu_weight})
        vcpus = min(vcpus, self.max_vcpus)
        name = self.name_of(account_id)
        want = {"vcpus": vcpus, "memory_kib": memory_kib, "weight": cpu_weight}
        with self._lock:
            try:
                dom = self._lookup(name)
                if dom is None or not dom.isActive():
                    top = max(memory_kib, max_memory_kib or 0)
                    uuid = None if dom is None else dom.UUIDString()
                    dom = self.conn.defineXML(
                        self._domain_xml(name, uuid, vcpus, memory_kib, top, want))
                    dom.create()
                else:
                    self._update_live(dom, vcpus, memory_kib)
                    self._set_meta(dom, want)
                self._set_weight(dom, cpu_weight)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {exc.get_error_message()}", name) from None
            return self._info(dom, account_id)

    def shutdown(self, account_id: str) -> None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                if dom is not None and dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {exc.get_error_message()}", account_id) from None

    def undefine(self, account_id: str) -> None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                if dom is None:
                    return
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {exc.get_error_message()}", account_id) from None

    def describe(self, account_id: str) -> VmInfo | None:
        with self._lock:
            try:
                dom = self._lookup(self.name_of(account_id))
                return None if dom is None else self._info(dom, account_id)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {exc.get_error_message()}", account_id) from None

    def list(self) -> list[VmInfo]:
        with self._lock:
            try:
                doms = [d for d in self.conn.listAllDomains() if d.name().startswith(self.prefix)]
                return sorted((self._info(d, d.name()[len(self.prefix):]) for d in doms),
                              key=lambda i: i.name)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {exc.get_error_message()}", self.uri) from None

    # -- helpers -------------------------------------------------------------------

    def _lookup(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _domain_xml(self, name: str, uuid: str | None, vcpus: int, memory_kib: int,
                    max_memory_kib: int, want: dict[str, int]) -> str:
        dtype = _DOMAIN_TYPES[self.driver]
        root = ET.Element("domain", type=dtype)
        ET.SubElement(root, "name").text = name
        if uuid is not None:
            ET.SubElement(root, "uuid").text = uuid
        ET.SubElement(root, "memory", unit="KiB").text = str(max_memory_kib)
        ET.SubElement(root, "currentMemory", unit="KiB").text = str(memory_kib)
        ET.SubElement(root, "vcpu", placement="static",
                      current=str(vcpus)).text = str(self.max_vcpus)
        meta = ET.SubElement(root, "metadata")
        meta.append(_meta_element(want))
        os_el = ET.SubElement(root, "os")
        if dtype == "lxc":
            ET.SubElement(os_el, "type").text = "exe"
            ET.SubElement(os_el, "init").text = "/bin/sh"
        else:
            ET.SubElement(os_el, "type").text = "hvm"
        ET.SubElement(root, "devices")
        return ET.tostring(root, encoding="unicode")

    def _update_live(self, dom: Any, vcpus: int, memory_kib: int) -> None:
        live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        memory_kib = min(memory_kib, int(dom.maxMemory()))
        if int(dom.info()[2]) != memory_kib:
            dom.setMemoryFlags(memory_kib, live)
            dom.setMemoryFlags(memory_kib, config)
        if int(dom.vcpusFlags(live)) != vcpus:
            dom.setVcpusFlags(vcpus, live)
            dom.setVcpusFlags(vcpus, config)

    def _weight_key(self, dom: Any) -> str | None:
        params = dom.schedulerParameters()
        return next((k for k in _WEIGHT_KEYS if k in params), None)

    def _set_weight(self, dom: Any, weight: int) -> None:
        key = self._weight_key(dom)
        if key is not None and int(dom.schedulerParameters()[key]) != weight:
            dom.setSchedulerParameters({key: weight})

    def _set_meta(self, dom: Any, want: dict[str, int]) -> None:
        text = ET.tostring(_meta_element(want, namespaced=False), encoding="unicode")
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
        for key in ("vcpus", "memory_kib", "weight"):
            value = el.get(key)
            if value is not None and value.isdigit():
                out[key] = int(value)
        return out

    def _info(self, dom: Any, account_id: str) -> VmInfo:
        state_code, max_mem, mem, vcpus, _cpu_time = dom.info()
        want = self._get_meta(dom)
        notes: list[str] = []
        key = self._weight_key(dom)
        if key is None:
            weight, key = want.get("weight", 0), "none"
            notes.append(f"{self.driver.lower()} driver has no scheduler weight; not enforced")
        else:
            weight = int(dom.schedulerParameters()[key])
            asked = want.get("weight")
            if asked is not None and asked != weight:
                notes.append(f"{self.driver.lower()} driver ignored {key}={asked} "
                             f"(reports {weight}); cpu share not enforced")
                weight = asked
        asked_mem = want.get("memory_kib")
        if asked_mem is not None and asked_mem > int(mem):
            notes.append(f"memory clamped to the domain's max ({int(max_mem)} KiB)")
        if self.driver == "TEST":
            notes.append("test driver: no guest runs; limits are recorded, not enforced")
        return VmInfo(name=dom.name(), account_id=account_id,
                      state=_STATES.get(int(dom.state()[0]), str(state_code)),
                      vcpus=int(vcpus), memory_kib=int(mem), max_memory_kib=int(max_mem),
                      weight=weight, weight_key=key, notes=tuple(notes))


def _meta_element(want: dict[str, int], namespaced: bool = True) -> ET.Element:
    tag = f"{{{META_URI}}}alloc" if namespaced else "alloc"
    return ET.Element(tag, {k: str(v) for k, v in sorted(want.items())})
