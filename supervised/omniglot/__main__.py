"""``python -m supervised.omniglot make-fixture DIR`` / ``download DIR`` (`supervised.omniglot.data.main`)."""

from supervised.omniglot.data import main

raise SystemExit(main())
