from coupon.cli import main

raise SystemExit(main())
