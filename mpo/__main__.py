"""``python -m mpo``: the ``mpo`` command (:func:`mpo.cli.main`)."""

from mpo.cli import main

raise SystemExit(main())
