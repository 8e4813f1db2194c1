"""``python -m supervised.images make-digits DIR`` (`supervised.images.digits.main`)."""

from supervised.images.digits import main

raise SystemExit(main())
