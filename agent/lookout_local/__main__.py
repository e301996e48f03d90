"""``python -m agent.lookout_local [options]``: same as ``l4e-agent lookout serve``;
``python -m agent.lookout_local worker [options]``: same as ``l4e-agent lookout worker``."""

import sys

from agent.lookout_local.cli import serve_main, worker_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(serve_main(sys.argv[1:]))
