"""``python -m foldwise predict ...``: the same as the ``foldwise`` console script."""

import sys

from foldwise.inference.cli import main

sys.exit(main())
