"""``python -m experiments.headroom``."""

import sys

from .cli import main

sys.exit(main())
