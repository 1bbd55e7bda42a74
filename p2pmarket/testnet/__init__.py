"""Testnets of network namespaces (docs/design.md section 9): a topology file
(:mod:`.topology`, pure) turned into namespaces, routes, NAT rules and an HTTP proxy
(:mod:`.plan`, pure), the testnet dir's files (:mod:`.datadirs`), the state file
(:mod:`.state`), its processes (:mod:`.procs`), its commands and taking it down
(:mod:`.teardown`) and the runner (:mod:`.netns`)."""
