from benchmarks.grid.cli import main

raise SystemExit(main())
