"""``python -m mpo.cli SUB ...`` (what ``accelerate launch -m mpo.cli train ...`` runs)."""

import sys

from mpo.cli import main

sys.exit(main())
