"""`python -m cellguard.agent`: the agent without the rest of the cellguard CLI."""

import sys

from cellguard.agent.cli import main

sys.exit(main(sys.argv[1:]))
