"""The host room (docs/design.md §6): the auctioneer's I/O around the pure auction of
:mod:`p2pmarket.auction` (RPC handlers, the tick loop, the account store), the
VMMs (:mod:`.vmm`), keeping domains in line with allocations (:mod:`.vmmsync`),
image upload and the local control routes.
"""
