"""HTTP transport: signed peer RPC (msgpack) and the local control API (JSON)."""
