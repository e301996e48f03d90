"""Real peers for the alarm hook tests: an HTTP webhook receiver, Modbus and OPC-UA servers, the writer factory
agent.runtime.asset is expected to supply, and a child process that runs an AlarmEngine until it is killed.

Run as a script (``python hook_peers.py raise-then-hang CONFIG_JSON STATE_DIR BASE_DIR``) it is that child: it
feeds anomalous rows, prints the raised alarm ids once the state is saved, then blocks its event loop so no
delivery can run before the parent's SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.server
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as the child script
    sys.path.insert(0, str(ROOT))

from agent.core.model import Diagnostic, Result  # noqa: E402
from tests.ports import free_port  # noqa: E402

T0 = 1_700_000_000


def result_rows(preds: list[int], start: float = T0 + 60, step: int = 60, window: int = T0) -> list[Result]:
    """Result lines one ``step`` apart, score 0.9 for prediction 1 and 0.1 for 0, two diagnostics."""
    return [
        Result(
            ts=start + i * step,
            prediction=p,
            reason="ANOMALY_DETECTED" if p else "NO_ANOMALY_DETECTED",
            score=0.9 if p else 0.1,
            diagnostics=(Diagnostic("pump\\flow", 0.7), Diagnostic("pump\\temp", 0.3)),
            window_start=window,
        )
        for i, p in enumerate(preds)
    ]


# ---------------------------------------------------------------------------------------------- webhook


@dataclass
class Delivery:
    body: dict
    headers: dict[str, str]


@dataclass
class WebhookPeer:
    """An HTTP server on 127.0.0.1 that answers ``fail_status`` to the first ``fail_first`` POSTs, then 200.

    With a ``secret``, a POST whose X-L4E-Signature does not verify is answered 401 and counted in
    ``bad_signatures`` (never accepted).
    """

    secret: bytes | None = None
    fail_first: int = 0
    fail_status: int = 500
    attempts: int = 0
    bad_signatures: int = 0
    accepted: list[Delivery] = field(default_factory=list)
    url: str = ""
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self._cond:
            self.attempts += 1
            if self.secret is not None:
                expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, headers.get("X-L4E-Signature", "")):
                    self.bad_signatures += 1
                    return 401
            if self.attempts <= self.fail_first:
                return self.fail_status
            self.accepted.append(Delivery(json.loads(body), headers))
            self._cond.notify_all()
            return 200

    def wait_accepted(self, count: int, timeout_secs: float) -> bool:
        """Block until ``count`` deliveries were accepted (run in a thread from async tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.accepted) >= count, timeout_secs)


@contextlib.contextmanager
def webhook_peer(**kwargs) -> Iterator[WebhookPeer]:
    peer = WebhookPeer(**kwargs)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = peer.handle(body, dict(self.headers.items()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    peer.url = f"http://127.0.0.1:{server.server_address[1]}/alarm"
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------------- PLC peers


@dataclass
class ModbusPeer:
    server: object
    port: int

    async def coil(self, address: int, device_id: int = 1) -> bool:
        return bool((await self.server.async_getValues(device_id, 1, address, 1))[0])

    async def register(self, address: int, device_id: int = 1) -> int:
        return int((await self.server.async_getValues(device_id, 3, address, 1))[0])


@contextlib.asynccontextmanager
async def modbus_peer() -> AsyncIterator[ModbusPeer]:
    """A Modbus TCP server on 127.0.0.1 (free port), device 1: coils 0..31 and holding registers 0..15."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    empty = SimData(65000, values=[False] * 16, datatype=DataType.BITS)
    device = SimDevice(
        1,
        simdata=(
            [SimData(0, values=[False] * 32, datatype=DataType.BITS)],
            [empty],
            [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
            [SimData(65000, values=[0], datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield ModbusPeer(server, server.transport.sockets[0].getsockname()[1])
    finally:
        await server.shutdown()




@dataclass
class OpcUaPeer:
    server: object
    endpoint: str
    node: object  # the writable Boolean variable
    node_id: str


@contextlib.asynccontextmanager
async def opcua_peer() -> AsyncIterator[OpcUaPeer]:
    """An asyncua server on 127.0.0.1 with a writable Boolean ``ns=2;s=Pump07.Alarm`` (False)."""
    from asyncua import Server, ua

    port = free_port()  # asyncua advertises the configured port in its endpoints: port 0 would be wrong
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    server.set_endpoint(endpoint)
    await server.set_application_uri("urn:l4e:test:hooks")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens([ua.AnonymousIdentityToken])
    ns = await server.register_namespace("urn:l4e:test:plc")
    node = await server.nodes.objects.add_variable(
        ua.NodeId("Pump07.Alarm", ns), ua.QualifiedName("Alarm", ns), False, varianttype=ua.VariantType.Boolean
    )
    await node.set_writable()
    await server.start()
    try:
        yield OpcUaPeer(server, endpoint, node, node.nodeid.to_string())
    finally:
        await server.stop()


def connector_writer_factory(sources: dict, base_dir: Path):
    """What agent.runtime.asset supplies to build_hooks: a write_back hook's writer from its named source."""
    from connectors.modbus.write_back import write_modbus
    from connectors.opcua.write_back import write_opcua

    def factory(hook):
        source = sources[hook.source]
        if hook.protocol == "modbus":
            device_id = 1 if hook.device_id is None else hook.device_id

            async def write(value) -> None:
                await write_modbus(source, device_id, hook.table, hook.address, value, type=hook.type, order=hook.order)
        else:

            async def write(value) -> None:
                await write_opcua(source, hook.node_id, value, base_dir)

        return write

    return factory


# ---------------------------------------------------------------------------------------------- crash child


async def _raise_then_hang(config_json: str, state_dir: str, base_dir: str) -> None:
    from agent.alarms.config import AlarmsConfig
    from agent.alarms.engine import AlarmEngine
    from agent.alarms.hooks import build_hooks
    from agent.core.clock import SystemClock

    config = AlarmsConfig.model_validate_json(config_json)
    engine = AlarmEngine("pump", config, Path(state_dir), build_hooks(config, Path(base_dir)), SystemClock())
    raised = await engine.on_results(result_rows([1, 1, 1]))
    print(json.dumps([a.id for a in raised]), flush=True)
    # The state (with its outbox) is on disk and the delivery tasks are created but have not run: block the
    # loop so they never do, as if the process died right after the decision.
    time.sleep(60)


if __name__ == "__main__":
    if sys.argv[1:2] != ["raise-then-hang"]:
        sys.exit("usage: hook_peers.py raise-then-hang CONFIG_JSON STATE_DIR BASE_DIR")
    asyncio.run(_raise_then_hang(*sys.argv[2:5]))
