"""Addresses as the NAT room takes them from the network: an IP literal (v4 or v6, in
its canonical text form; no names, no IPv6 zone) and a port 1..65535; and which
addresses a registrar may dial back (:func:`may_dial`). Pure."""

from __future__ import annotations

import ipaddress

from p2pmarket.nat.errors import NatError

MAX_HOST_CHARS = 45   # the longest IPv6 text form (with an embedded IPv4 address)
Address = tuple[str, int]


def canonical_ip(host: object) -> str:
    """``host`` as a canonical IP literal (``ipaddress``'s text form, IPv4-mapped IPv6
    given as IPv4); :class:`NatError` ``malformed`` if it is none."""
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS or "%" in host:
        raise NatError("host must be an IP address literal", _short(host))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise NatError("host must be an IP address literal", _short(host)) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_port(port: object) -> int:
    """``port`` if it is an integer in 1..65535, else :class:`NatError` ``malformed``."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise NatError("port must be an integer in 1..65535", _short(port))
    return port


def parse_address(value: object) -> Address:
    """An ``[host, port]`` pair from the wire, checked and canonical."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise NatError("address must be [host, port]", _short(value))
    return canonical_ip(value[0]), check_port(value[1])


def may_dial(observed: str, claimed: str) -> bool:
    """Whether a registrar that saw a registration come from ``observed`` may dial
    ``claimed`` (both canonical IP literals) once paid for in dial data: a global
    unicast address, or one no wider in scope than ``observed`` (a loopback address
    only for a loopback peer, a private one only for a private or loopback peer), so
    a remote peer cannot point the registrar at the registrar's own LAN or host.
    Never an unspecified, multicast, link-local or reserved address."""
    try:
        seen, target = ipaddress.ip_address(observed), ipaddress.ip_address(claimed)
    except ValueError:
        return False
    if target.is_unspecified or target.is_multicast or target.is_link_local:
        return False
    if target.is_loopback:
        return seen.is_loopback
    if target.is_reserved:
        return False
    if target.is_private:
        return seen.is_private or seen.is_loopback
    return target.is_global


def rate_key(ip: str) -> str:
    """What a registrar rate-limits by for a peer at ``ip`` (canonical): the IPv4
    address, or the IPv6 /64 (one host usually holds a whole /64)."""
    if ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def _short(value: object) -> object:
    """A bounded form of a bad value, for an error."""
    if isinstance(value, str | bytes):
        return value[:64]
    if isinstance(value, int) and not -2**63 <= value < 2**63:
        return "<big int>"
    if value is None or isinstance(value, int):
        return value
    return type(value).__name__


__all__ = ["MAX_HOST_CHARS", "Address", "canonical_ip", "check_port",
           "may_dial", "parse_address", "rate_key"]
