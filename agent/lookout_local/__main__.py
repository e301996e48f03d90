"""``python -m agent.lookout_local [options]``: same as ``l4e-agent lookout serve``."""

import sys

from agent.lookout_local.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
