from mlinfra.cli import main

raise SystemExit(main())
