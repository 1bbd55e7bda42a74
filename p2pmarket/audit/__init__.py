"""PeerReview-style accountability for hosts (DESIGN.md §5): the host's signed audit
log (:mod:`.log`), its replay against the pure auction (:mod:`.replay`), proofs of
misbehaviour and their store (:mod:`.evidence`), the witness service and its durable
progress (:mod:`.witness`, :mod:`.witnessstore`), and the DHT adapters the witnesses
and notaries use (:mod:`.witnessing`)."""
