"""PeerReview-style accountability for hosts (docs/design.md §5): the pure entry format
(:mod:`.entry`) and the host's signed audit log (:mod:`.log`), its replay against the
pure auction (:mod:`.replay`) with the rules for the refunds a host pays
(:mod:`.refunds`), proofs of misbehaviour (:mod:`.evidence`) and the store
of valid ones (:mod:`.evidencestore`), the witnesses -- what one audit decides about
one host (:mod:`.watched`, pure), the service with its RPCs and audit rounds
(:mod:`.witness`) and its durable progress (:mod:`.witnessstore`) -- the DHT adapters
the witnesses and notaries use (:mod:`.witnessing`), and the audit's error class
(:mod:`.errors`)."""
