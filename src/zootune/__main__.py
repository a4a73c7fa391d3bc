"""``python -m zootune`` (also what ``torchrun -m zootune`` runs)."""

import sys

from zootune.cli import main

sys.exit(main())
