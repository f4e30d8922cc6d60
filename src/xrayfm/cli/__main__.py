"""``python -m xrayfm.cli``: the ``xrayfm`` command (e.g. under ``torchrun``)."""

import sys

from xrayfm.cli import main

sys.exit(main())
