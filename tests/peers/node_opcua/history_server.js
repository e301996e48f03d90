// node-opcua's historian for the l4e-agent backfill tests.
//
// usage: node history_server.js PORT T0 COUNT
// Variables in namespace 1 (string NodeIds), Double:
//   HistA, HistB   historized (addressSpace.installHistoricalDataNode): COUNT values, value i at source time
//                  T0 + i seconds (Unix), set with setValueFromSource as a device would
//   Plain          no history
// Prints "READY <port>" on stdout once the history is filled and the endpoint listens.
"use strict";

const { OPCUAServer } = require("node-opcua-server");
const { Variant, DataType } = require("node-opcua-variant");
const { StatusCodes } = require("node-opcua-status-code");

const port = parseInt(process.argv[2], 10);
const t0 = parseFloat(process.argv[3]);
const count = parseInt(process.argv[4], 10);

async function main() {
    const server = new OPCUAServer({
        port, hostname: "127.0.0.1", alternateHostname: ["127.0.0.1"], resourcePath: "/l4e",
        buildInfo: { productName: "l4e-node-opcua-historian" }, allowAnonymous: true,
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const plant = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Plant" });
    const add = (name) => ns.addVariable({
        componentOf: plant, browseName: name, nodeId: `s=${name}`, dataType: "Double",
        value: new Variant({ dataType: DataType.Double, value: 0 }),
    });
    const historized = ["HistA", "HistB"].map(add);
    add("Plain");
    for (const variable of historized) {
        addressSpace.installHistoricalDataNode(variable, { maxOnlineValues: count + 100 });
    }
    for (let i = 0; i < count; i++) {
        for (const variable of historized) {
            variable.setValueFromSource(new Variant({ dataType: DataType.Double, value: i }), StatusCodes.Good,
                                        new Date((t0 + i) * 1000));
        }
    }
    await new Promise((resolve) => setTimeout(resolve, 200)); // the historian stores on value change events
    await server.start();
    console.log(`READY ${port}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
