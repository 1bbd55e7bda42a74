"""Price history: the pure downsampling rules (:mod:`~p2pmarket.history.buckets`) and
their sqlite store (:mod:`~p2pmarket.history.store`, ``history.sqlite``)."""
