"""``python -m refusal_probe.redteam``: regenerate the suffix family (see :mod:`.cli`)."""

import sys

from refusal_probe.redteam.cli import main

sys.exit(main())
