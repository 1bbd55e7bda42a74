from p2pmarket.cli import main

raise SystemExit(main())
