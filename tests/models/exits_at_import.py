"""sys.exit(5) while being imported."""

import sys

sys.exit(5)
