from .tables import main

raise SystemExit(main())
