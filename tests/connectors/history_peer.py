"""A real asyncua Server on 127.0.0.1 that keeps the history of its variables (for the backfill tests).

Address space (namespace index 2): ``ns=2;s=Hist.<name>`` Double variables. Historized ones have AccessLevel
CurrentRead|HistoryRead and Historizing = true (what a server that keeps history says of a node) and keep every
value written to them in asyncua's in-memory history (``historize_node_data_change``, no age limit: the tests
write on a timeline of their own); the others (``plain``) have neither, so a HistoryRead gets nothing.

``write(name, value, ts)`` writes a value with its SourceTimestamp, as a device does; ``fill(name, values)``
puts values straight into the history store (the benchmark's hour of history without waiting an hour).
``run_writer(...)`` writes a ramp at a fixed period on the caller's timeline until cancelled.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from asyncua import Server, ua
from asyncua.server.history import HistoryDict

from tests.ports import free_port

NS_URI = "urn:l4e-agent:history-test"


def stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class HistoryPeer:
    def __init__(self, historized: list[str], plain: list[str] = (), port: int | None = None,
                 max_response: int = 10_000) -> None:
        self.port = port or free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.historized = list(historized)
        self.plain = list(plain)
        self.max_response = max_response
        self.server: Server | None = None
        self.nodes: dict[str, object] = {}
        self.written: dict[str, list[tuple[float, float]]] = {n: [] for n in [*historized, *plain]}

    @staticmethod
    def node_id(name: str) -> str:
        return f"ns=2;s=Hist.{name}"

    async def start(self) -> HistoryPeer:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.storage = HistoryDict(self.max_response)
        server.iserver.history_manager.set_storage(self.storage)
        idx = await server.register_namespace(NS_URI)
        assert idx == 2
        folder = await server.nodes.objects.add_object(ua.NodeId("Hist", idx), ua.QualifiedName("Hist", idx))
        for name in [*self.historized, *self.plain]:
            node = await folder.add_variable(ua.NodeId(f"Hist.{name}", idx), ua.QualifiedName(name, idx),
                                             ua.Variant(0.0, ua.VariantType.Double))
            self.nodes[name] = node
        await server.start()
        for name in self.historized:
            node = self.nodes[name]
            level = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask
            await node.write_attribute(ua.AttributeIds.AccessLevel,
                                       ua.DataValue(ua.Variant(level, ua.VariantType.Byte)))
            await node.write_attribute(ua.AttributeIds.Historizing,
                                       ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
            await server.historize_node_data_change(node, period=None, count=0)
        self.server = server
        return self

    async def restart(self, down_secs: float = 0.5) -> None:
        """Stop listening, then listen again on the same port with the same nodes and history (a server
        restart as the network sees it: sessions and continuation points are gone)."""
        await self.server.stop()
        await asyncio.sleep(down_secs)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def write(self, name: str, value: float, ts: float) -> None:
        await self.nodes[name].write_value(ua.DataValue(ua.Variant(float(value), ua.VariantType.Double),
                                                        SourceTimestamp=stamp(ts), ServerTimestamp=stamp(ts)))
        self.written[name].append((ts, float(value)))

    async def fill(self, name: str, values: list[tuple[float, float]]) -> None:
        """Put (ts, value) pairs straight into the history store (not the live value)."""
        storage = self.storage
        node_id = self.nodes[name].nodeid
        for ts, value in values:
            await storage.save_node_value(node_id, ua.DataValue(ua.Variant(float(value), ua.VariantType.Double),
                                                                SourceTimestamp=stamp(ts), ServerTimestamp=stamp(ts)))

    def history(self, name: str) -> list[tuple[float, float]]:
        """(ts, value) of what the server's history holds for ``name`` (in-process)."""
        data = self.storage._datachanges.get(self.nodes[name].nodeid, [])
        return [(dv.SourceTimestamp.replace(tzinfo=UTC).timestamp() if dv.SourceTimestamp.tzinfo is None
                 else dv.SourceTimestamp.timestamp(), float(dv.Value.Value)) for dv in data]

    async def run_writer(self, now, period: float, value_of) -> None:
        """Write ``value_of(name, k, ts)`` to every variable at ts = k × period on the ``now()`` timeline (the
        agent's), catching up when late, until cancelled."""
        k = int(now() // period) + 1
        while True:
            ts = k * period
            delay = ts - now()
            if delay > 0:
                await asyncio.sleep(delay)
            for name in self.nodes:
                await self.write(name, value_of(name, k, ts), ts)
            k += 1
