"""``python -m beyondsgd.cli ...`` (e.g. under ``torchrun``)."""

import sys

from . import main

if __name__ == "__main__":  # importing this module (e.g. a walk of the package) runs nothing
    sys.exit(main())
