from mammotriage.cli import main

raise SystemExit(main())
