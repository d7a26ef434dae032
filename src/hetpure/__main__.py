"""``python -m hetpure ...`` (and ``torchrun -m hetpure evaluate ...``)."""

import sys

from .cli import main

sys.exit(main())
