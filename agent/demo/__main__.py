"""``python -m agent.demo``: the demo run (agent.demo.run), as before the demo became a package."""

import sys

from agent.demo.run import demo_main

sys.exit(demo_main(sys.argv[1:]))
