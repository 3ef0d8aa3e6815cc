"""``python -m supa_vectors.cli``: the ``supa-vectors`` command."""

import sys

from supa_vectors.cli import main

sys.exit(main())
