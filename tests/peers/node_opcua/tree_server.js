// A node-opcua server with a large nested plant tree, for discovery (l4e-agent discover opcua).
//
// usage: node tree_server.js PORT
// Namespace 1, string NodeIds = the dotted browse path; every numeric value is its index (a Double):
//   Site/Line1..Line4/Unit01..Unit10/T000..T099   4,000 Doubles (value = line*1000 + unit*100 + tag)
//   Site/Line5/Bulk/B0000..B1099                  1,100 Doubles in one folder (more references than one
//                                                 browse answer carries: paged with BrowseNext)
//   Site/Line1/Unit01/Flow                        AnalogItem with EngineeringUnits "%"
//   Site/Line1/Unit01/Name                        String (skipped)
//   Site/Line1/Unit01/Curve                       Double array (skipped)
//   Site/Locked/L0..L4                            Doubles with no read access (skipped)
// Prints "READY <port>" on stdout once the endpoint listens.
"use strict";

const { OPCUAServer } = require("node-opcua-server");
const { Variant, DataType, VariantArrayType } = require("node-opcua-variant");
const { standardUnits } = require("node-opcua-data-access");
const { AccessLevelFlag } = require("node-opcua-data-model");

const port = parseInt(process.argv[2], 10);

async function main() {
    const server = new OPCUAServer({
        port, hostname: "127.0.0.1", alternateHostname: ["127.0.0.1"], resourcePath: "/l4e",
        buildInfo: { productName: "l4e-node-opcua-tree" }, allowAnonymous: true,
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const folder = (parent, path) => ns.addFolder(parent, { browseName: path[path.length - 1], nodeId: `s=${path.join(".")}` });
    const double = (parent, path, value) => ns.addVariable({
        componentOf: parent, browseName: path[path.length - 1], nodeId: `s=${path.join(".")}`, dataType: "Double",
        value: new Variant({ dataType: DataType.Double, value }),
    });
    const site = folder(addressSpace.rootFolder.objects, ["Site"]);
    for (let line = 1; line <= 4; line++) {
        const lineNode = folder(site, ["Site", `Line${line}`]);
        for (let unit = 1; unit <= 10; unit++) {
            const u = `Unit${String(unit).padStart(2, "0")}`;
            const unitNode = folder(lineNode, ["Site", `Line${line}`, u]);
            for (let tag = 0; tag < 100; tag++) {
                double(unitNode, ["Site", `Line${line}`, u, `T${String(tag).padStart(3, "0")}`],
                       line * 1000 + unit * 100 + tag);
            }
            if (line === 1 && unit === 1) {
                ns.addAnalogDataItem({
                    componentOf: unitNode, browseName: "Flow", nodeId: "s=Site.Line1.Unit01.Flow", dataType: "Double",
                    engineeringUnitsRange: { low: 0, high: 100 }, engineeringUnits: standardUnits.percent,
                    value: new Variant({ dataType: DataType.Double, value: 42.5 }),
                });
                ns.addVariable({
                    componentOf: unitNode, browseName: "Name", nodeId: "s=Site.Line1.Unit01.Name", dataType: "String",
                    value: new Variant({ dataType: DataType.String, value: "unit one" }),
                });
                ns.addVariable({
                    componentOf: unitNode, browseName: "Curve", nodeId: "s=Site.Line1.Unit01.Curve", dataType: "Double",
                    valueRank: 1, arrayDimensions: [3],
                    value: new Variant({ dataType: DataType.Double, arrayType: VariantArrayType.Array,
                                         value: new Float64Array([1, 2, 3]) }),
                });
            }
        }
    }
    const line5 = folder(site, ["Site", "Line5"]);
    const bulk = folder(line5, ["Site", "Line5", "Bulk"]);
    for (let i = 0; i < 1100; i++) {
        double(bulk, ["Site", "Line5", "Bulk", `B${String(i).padStart(4, "0")}`], i);
    }
    const locked = folder(site, ["Site", "Locked"]);
    for (let i = 0; i < 5; i++) {
        ns.addVariable({
            componentOf: locked, browseName: `L${i}`, nodeId: `s=Site.Locked.L${i}`, dataType: "Double",
            accessLevel: AccessLevelFlag.None, userAccessLevel: AccessLevelFlag.None,
            value: new Variant({ dataType: DataType.Double, value: i }),
        });
    }
    await server.start();
    process.stdout.write(`READY ${port}\n`);
    const stop = async () => { await server.shutdown(0); process.exit(0); };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
