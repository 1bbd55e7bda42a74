"""What every room shares: errors, files, canonical msgpack and envelopes (:mod:`.wire`),
keys and node ids (:mod:`.identity`), the clock, money units, the genesis file and
settings (:mod:`.config`)."""
