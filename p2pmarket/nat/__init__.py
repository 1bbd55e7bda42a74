"""Reachability for nodes behind NAT routers and HTTP proxies (docs/design.md §7): not
built yet; the NAT issue brings callback verification and relays here."""
