"""The command line: the parser (:mod:`.main`), the commands and all terminal
formatting, and the local testnet (:mod:`.testnet`)."""
