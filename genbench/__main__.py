"""``python -m genbench`` (used under torchrun) is the same as the ``genbench`` command."""

import sys

from genbench.cli import main

sys.exit(main())
