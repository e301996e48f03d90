"""An asyncua server with a nested plant tree, for discovery (``l4e-agent discover opcua``).

Namespace "urn:l4e-agent:tree" (string NodeIds are the dotted browse path):

    Objects/Site/Line1/Pump1   Flow (Double 1.5, EngineeringUnits "m³/h"), Pressure (Float 2.25),
                               Run (Boolean true), Label (String, skipped), Curve (Double array, skipped),
                               Secret (Double, AccessLevel 0: skipped as not readable)
    Objects/Site/Line1/Pump2   Flow (Double 3.5), Pressure (Float 4.5), Count (Int32 7)
    Objects/Site/Line2/Pump1   Flow (Double 5.5), Temp (UInt16 60)
    Objects/Site/Line2/Tank    Level (Double 0.75), Config (an object holding Mode, a String)
    Objects/Bulk/Group<g>      Tag<i> (Double), ``bulk`` of them in groups of 100 (a larger tree; 0 by default)

``refuse_browsing``: Browse and BrowseNext answer BadUserAccessDenied (everything else works).
"""

from __future__ import annotations

from asyncua import Server, ua
from asyncua.crypto.permission_rules import PermissionRuleset

from tests.ports import free_port

NS_URI = "urn:l4e-agent:tree"

TREE = {
    ("Site", "Line1", "Pump1"): [("Flow", 1.5, ua.VariantType.Double), ("Pressure", 2.25, ua.VariantType.Float),
                                 ("Run", True, ua.VariantType.Boolean), ("Label", "idle", ua.VariantType.String),
                                 ("Curve", [1.0, 2.0, 3.0], ua.VariantType.Double),
                                 ("Secret", 9.0, ua.VariantType.Double)],
    ("Site", "Line1", "Pump2"): [("Flow", 3.5, ua.VariantType.Double), ("Pressure", 4.5, ua.VariantType.Float),
                                 ("Count", 7, ua.VariantType.Int32)],
    ("Site", "Line2", "Pump1"): [("Flow", 5.5, ua.VariantType.Double), ("Temp", 60, ua.VariantType.UInt16)],
    ("Site", "Line2", "Tank"): [("Level", 0.75, ua.VariantType.Double)],
    ("Site", "Line2", "Tank", "Config"): [("Mode", "auto", ua.VariantType.String)],
}


class RefuseBrowsing(PermissionRuleset):
    """Every service but Browse and BrowseNext (a server that lets a client in and read, not look around)."""

    REFUSED = frozenset({ua.NodeId(ua.ObjectIds.BrowseRequest_Encoding_DefaultBinary),
                         ua.NodeId(ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary)})

    def check_validity(self, user, action_type_id, body):
        return action_type_id not in self.REFUSED


class OpcUaTreePeer:
    def __init__(self, bulk: int = 0, refuse_browsing: bool = False) -> None:
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/"
        self.bulk = bulk
        self.refuse_browsing = refuse_browsing
        self.server: Server | None = None
        self.idx = 0

    async def start(self) -> OpcUaTreePeer:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity],
                                   permission_ruleset=RefuseBrowsing() if self.refuse_browsing else None)
        idx = self.idx = await server.register_namespace(NS_URI)
        folders = {(): server.nodes.objects}

        async def folder(path):
            if path not in folders:
                parent = await folder(path[:-1])
                folders[path] = await parent.add_object(ua.NodeId(".".join(path), idx),
                                                        ua.QualifiedName(path[-1], idx))
            return folders[path]

        for path, variables in TREE.items():
            parent = await folder(path)
            for name, value, vtype in variables:
                node = await parent.add_variable(ua.NodeId(".".join((*path, name)), idx),
                                                 ua.QualifiedName(name, idx), ua.Variant(value, vtype))
                if isinstance(value, list):
                    await node.write_attribute(ua.AttributeIds.ValueRank, ua.DataValue(ua.Variant(
                        1, ua.VariantType.Int32)))
                if name == "Secret":
                    for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                        await node.write_attribute(attr, ua.DataValue(ua.Variant(0, ua.VariantType.Byte)))
                if path == ("Site", "Line1", "Pump1") and name == "Flow":
                    unit = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                                            UnitId=4666696, DisplayName=ua.LocalizedText("m³/h"),
                                            Description=ua.LocalizedText("cubic metre per hour"))
                    await node.add_property(ua.NodeId("Site.Line1.Pump1.Flow.EngineeringUnits", idx),
                                            ua.QualifiedName("EngineeringUnits", 0),
                                            ua.Variant(unit, ua.VariantType.ExtensionObject))
        for i in range(self.bulk):
            group = await folder(("Bulk", f"Group{i // 100:02d}"))
            await group.add_variable(ua.NodeId(f"Bulk.Tag{i:05d}", idx), ua.QualifiedName(f"Tag{i:05d}", idx),
                                     ua.Variant(float(i), ua.VariantType.Double))
        await server.start()
        self.server = server
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
