"""``python -m scc_convert`` is the ``scc-convert`` command."""

import sys

from .cli import main

sys.exit(main())
