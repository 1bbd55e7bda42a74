"""One market node: the service that wires every room together (:mod:`.service`) and
what the host advertises of itself (:mod:`.advert`)."""
