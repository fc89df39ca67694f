"""`python -m cellguard`: the same as the `cellguard` command."""

import sys

from cellguard.cli import main

sys.exit(main())
