from p2pmarket.cli.main import main

if __name__ == "__main__":   # not when a spawned worker (audit.sigpool) imports it
    raise SystemExit(main())
