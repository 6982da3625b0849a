from chunkah.cli import main

raise SystemExit(main())
