"""``python -m foldwise predict ...``: the same as the ``foldwise`` console script."""

import sys

from foldwise.inference.cli import main

if __name__ == "__main__":  # decoding processes import this module again (as __mp_main__): run once
    sys.exit(main())
