from p2pmarket.cli.main import main

raise SystemExit(main())
