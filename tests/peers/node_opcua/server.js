// A third-party OPC-UA server (node-opcua) for the l4e-agent tests: a plant that reports by exception.
//
// usage: node server.js PORT
// Variables in namespace 1 (string NodeIds):
//   Setpoint   Double, constant 42.5
//   Valve      Double, constant 1
//   Drift      Double, changes by +0.25 every DRIFT_MS (default 400 ms)
//   AbsDb      AnalogItem (EURange 0..100), wobbles by ±0.2 every 300 ms: hidden by an absolute deadband ≥ 0.5
//   PctDb      AnalogItem (EURange 0..100), wobbles by ±0.5 every 300 ms: hidden by a percent deadband ≥ 2 %
// Commands on stdin, one JSON object a line:
//   {"set": "Setpoint", "value": 43}     a new value (Good)
//   {"bad": "Setpoint"}                  the item turns BadSensorFailure (its value stays)
//   {"good": "Setpoint"}                 the item is Good again with its last value
// Prints "READY <port>" on stdout once the endpoint listens.
"use strict";

const readline = require("readline");
const { OPCUAServer } = require("node-opcua-server");
const { Variant, DataType } = require("node-opcua-variant");
const { StatusCodes } = require("node-opcua-status-code");
const { standardUnits } = require("node-opcua-data-access");

const port = parseInt(process.argv[2], 10);
const driftMs = parseInt(process.env.DRIFT_MS || "400", 10);

async function main() {
    const server = new OPCUAServer({
        port,
        hostname: "127.0.0.1",
        alternateHostname: ["127.0.0.1"],
        resourcePath: "/l4e",
        buildInfo: { productName: "l4e-node-opcua-peer" },
        serverCertificateManager: undefined,
        allowAnonymous: true,
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const plant = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Plant" });

    const state = {
        Setpoint: { value: 42.5, status: StatusCodes.Good },
        Valve: { value: 1.0, status: StatusCodes.Good },
        Drift: { value: 10.0, status: StatusCodes.Good },
        AbsDb: { value: 50.0, status: StatusCodes.Good },
        PctDb: { value: 50.0, status: StatusCodes.Good },
    };
    const nodes = {};
    for (const name of ["Setpoint", "Valve", "Drift"]) {
        nodes[name] = ns.addVariable({
            componentOf: plant, browseName: name, nodeId: `s=${name}`, dataType: "Double",
            value: new Variant({ dataType: DataType.Double, value: state[name].value }),
        });
    }
    for (const name of ["AbsDb", "PctDb"]) {
        nodes[name] = ns.addAnalogDataItem({
            componentOf: plant, browseName: name, nodeId: `s=${name}`, dataType: "Double",
            engineeringUnitsRange: { low: 0, high: 100 }, engineeringUnits: standardUnits.percent,
            value: new Variant({ dataType: DataType.Double, value: state[name].value }),
        });
    }
    const publish = (name) => nodes[name].setValueFromSource(
        new Variant({ dataType: DataType.Double, value: state[name].value }), state[name].status, new Date());

    setInterval(() => {
        if (state.Drift.status === StatusCodes.Good) {
            state.Drift.value += 0.25;
            publish("Drift");
        }
    }, driftMs);
    let flip = 1;
    setInterval(() => {
        flip = -flip;
        state.AbsDb.value = 50.0 + 0.2 * flip;
        state.PctDb.value = 50.0 + 0.5 * flip;
        publish("AbsDb");
        publish("PctDb");
    }, 300);

    readline.createInterface({ input: process.stdin }).on("line", (line) => {
        if (!line.trim()) return;
        const cmd = JSON.parse(line);
        if (cmd.set) {
            state[cmd.set].value = cmd.value;
            state[cmd.set].status = StatusCodes.Good;
            publish(cmd.set);
        } else if (cmd.bad) {
            state[cmd.bad].status = StatusCodes.BadSensorFailure;
            publish(cmd.bad);
        } else if (cmd.good) {
            state[cmd.good].status = StatusCodes.Good;
            publish(cmd.good);
        }
        process.stdout.write(`OK ${line}\n`);
    });

    await server.start();
    process.stdout.write(`READY ${port}\n`);
    const stop = async () => { await server.shutdown(0); process.exit(0); };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
