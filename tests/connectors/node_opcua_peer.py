"""A third-party OPC-UA server for the tests: node-opcua (tests/peers/node_opcua/server.js) in a Node process.

`make system-deps` installs Node.js and the server's npm packages. The peer can be killed (SIGKILL: no goodbye
to the client, as a PLC losing power) and started again on the same port, and its items driven from stdin.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests.conftest import free_port

PEER_DIR = Path(__file__).resolve().parents[1] / "peers" / "node_opcua"


class NodeOpcUaPeer:
    """``start()`` → READY; ``command(...)`` drives an item; ``kill()``/``start()`` cut and restore the plant."""

    def __init__(self, port: int | None = None, script: str = "server.js", args: tuple[str, ...] = ()) -> None:
        """``script``/``args``: another server of PEER_DIR, e.g. ``NodeOpcUaPeer(script="load_server.js",
        args=("20000",))`` for the 20,000-variable plant (all changing every second, see load_server.js)."""
        self.port = port or free_port()
        self.script, self.args = script, args
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/l4e"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60.0) -> NodeOpcUaPeer:
        node = shutil.which("node")
        assert node, "node (Debian's nodejs) is missing: run `make system-deps`"
        assert (PEER_DIR / "node_modules" / "node-opcua-server").is_dir(), \
            f"node-opcua is not installed in {PEER_DIR}: run `make system-deps`"
        self.proc = await asyncio.create_subprocess_exec(
            node, str(PEER_DIR / self.script), str(self.port), *self.args, cwd=PEER_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(self._expect("READY"), timeout)
        return self

    async def _expect(self, prefix: str) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = (await self.proc.stdout.readline()).decode()
            assert line, "node-opcua server exited"
            if line.startswith(prefix):
                return line

    async def command(self, **cmd) -> None:
        """Send one command (see server.js): set=NAME value=V, bad=NAME, good=NAME; waits for its OK."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        await asyncio.wait_for(self._expect("OK"), 10)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        await self.kill()
