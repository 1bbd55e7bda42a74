"""Test harness kept out of the package: an in-process notary committee
(:mod:`.local_committee`), notaries as processes (:mod:`.notary_server`,
:mod:`.notary_cluster`) for fault tests and the ledger benchmark, the ledger
fixtures the ledger and audit tests share (:mod:`.chains`), and the pure auction
in memory (:mod:`.auction_harness`)."""
