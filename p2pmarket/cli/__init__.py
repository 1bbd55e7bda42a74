"""The command line: the parser and dispatch (:mod:`.main`), one module per command
group with its part of the parser (:mod:`.node`, :mod:`.wallet`, :mod:`.audit`,
:mod:`.buy`, :mod:`.host`, :mod:`.testnet`, which also runs the local testnet), the
shared options (:mod:`.options`) and terminal output (:mod:`.terminal`)."""
