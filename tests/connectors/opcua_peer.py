"""A real asyncua Server on 127.0.0.1 for the OPC-UA connector tests.

Address space (namespace index 2, "urn:l4e-agent:test"):

    Objects/Pump07            object
        Flow    ns=2;s=Pump07.Flow    Double   1.5
        Run     ns=2;s=Pump07.Run     Boolean  True
        Count   ns=2;s=Pump07.Count   Int32    7
        Label   ns=2;s=Pump07.Label   String   "idle"
        Setpt   ns=2;s=Pump07.Setpt   UInt16   10

``restart()`` stops the listener and starts it again on the same port with the same nodes (the same
Server object), which is what a PLC runtime restart looks like from the network.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from tests.ports import free_port

NS_URI = "urn:l4e-agent:test"




class PasswordUsers:
    """asyncua user manager: exactly one user name with one password."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.username and password == self.password:
            return User(role=UserRole.User)
        return None


@dataclass
class Secure:
    """Server side of a Basic256Sha256 SignAndEncrypt endpoint with a user name token."""

    cert: Path
    key: Path
    username: str
    password: str


class OpcUaPeer:
    """The test server; ``nodes`` maps short names (flow, run, count, label, setpt) to server Nodes."""

    def __init__(self, port: int | None = None, secure: Secure | None = None, users=None) -> None:
        """``users``: an asyncua user manager replacing the default one-user PasswordUsers (secure only)."""
        self.port = port or free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.secure = secure
        self.users = users
        self.server: Server | None = None
        self.nodes: dict[str, Node] = {}
        self.vtypes: dict[str, ua.VariantType] = {}

    async def start(self) -> OpcUaPeer:
        users = self.users or (PasswordUsers(self.secure.username, self.secure.password) if self.secure else None)
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("l4e-agent test peer")
        if self.secure is not None:
            await server.set_application_uri("urn:l4e-agent:test-server")
            await server.load_certificate(str(self.secure.cert))
            await server.load_private_key(str(self.secure.key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NS_URI)
        pump = await server.nodes.objects.add_object(ua.NodeId("Pump07", idx), ua.QualifiedName("Pump07", idx))
        specs = {
            "flow": ("Flow", 1.5, ua.VariantType.Double),
            "run": ("Run", True, ua.VariantType.Boolean),
            "count": ("Count", 7, ua.VariantType.Int32),
            "label": ("Label", "idle", ua.VariantType.String),
            "setpt": ("Setpt", 10, ua.VariantType.UInt16),
        }
        for key, (name, value, vtype) in specs.items():
            node = await pump.add_variable(
                ua.NodeId(f"Pump07.{name}", idx), ua.QualifiedName(name, idx), ua.Variant(value, vtype)
            )
            await node.set_writable()
            self.nodes[key] = node
            self.vtypes[key] = vtype
        await server.start()
        self.server = server
        return self

    async def restart(self) -> None:
        """Stop listening and listen again on the same port; sessions and subscriptions are gone."""
        assert self.server is not None
        await self.server.stop()
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def set(
        self,
        key: str,
        value,
        vtype: ua.VariantType | None = None,
        *,
        source_ts: datetime | None = None,
        status: int | None = None,
    ) -> None:
        """Write a value as the device would: optional source timestamp and status code."""
        node = self.nodes[key]
        dv = ua.DataValue(
            ua.Variant(value, vtype or self.vtypes[key]),
            SourceTimestamp=source_ts or datetime.now(UTC),
            StatusCode=ua.StatusCode(status) if status is not None else ua.StatusCode(),
        )
        await node.write_value(dv)

    def value(self, key: str) -> ua.DataValue:
        """The server's current DataValue (read in-process: works whatever its status)."""
        assert self.server is not None
        return self.server.read_attribute_value(self.nodes[key].nodeid)


class CuttableLink:
    """A TCP relay in front of a peer. ``cut()`` keeps every socket open but drops all bytes both ways, as a
    pulled cable or a silent firewall does (no FIN, no RST); ``mend()`` forwards again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.is_cut = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    async def start(self) -> CuttableLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.is_cut = True

    def mend(self) -> None:
        self.is_cut = False

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if not self.is_cut:
                    sink.write(data)
                    await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()
