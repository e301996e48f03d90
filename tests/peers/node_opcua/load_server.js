// A large plant for the scale benchmarks: a node-opcua server with N Double variables that ALL change every second.
//
// usage: node load_server.js PORT N
// Variables in namespace 1 (string NodeIds): v0 .. v<N-1>, Double, in folders "F000", "F001", ... of 1,000 under
// the object "Plant". Each second every variable gets a new value (k + i/1e6 at tick k) with the current time as
// its source timestamp (setValueFromSource). The N updates of a second are spread over UPDATE_SLICES (default 10)
// equal slices 1000/UPDATE_SLICES ms apart, each variable always in the same slice, so each still changes exactly
// once a second and node does not stall its event loop (publish responses) for one 20,000-write burst.
//
// The server limits are raised so that ONE client session and ONE subscription can monitor all N items:
//   OperationLimits MaxNodesPerRead/Browse/RegisterNodes/TranslateBrowsePaths and MaxMonitoredItemsPerCall = N,
//   MaxMonitoredItems(PerSubscription) = max(N, defaults),
//   MaxNotificationsPerPublish: node-opcua caps every subscription's revised value at the static
//   Subscription.maxNotificationPerPublishHighLimit (1,000 by default); it is raised to N here, so a
//   subscription that asks for 0 (= no limit) gets all N changes of a second in one PublishResponse
//   (MAX_NOTIFICATIONS_PER_PUBLISH=1000 in the environment restores the default, to see how a client copes),
//   MinSupportedSampleRate = 0: an item that asks for SamplingInterval 0 is served exception-based with every
//   change reported and no per-item coalescing timer (node-opcua's default 100 ms floor arms one setTimeout per
//   item per change: at 20,000 changes/s that saturated node's core and it delivered ~6,000 values/s). Measured
//   on 2 shared cores at 20,000 variables: ~15-20 % of a core for node with SamplingInterval 0, ~40 % with
//   1000 ms (one sampling tick per item per second on node-opcua's common timer).
// Prints "READY <port>" on stdout once the endpoint listens.
"use strict";

const { OPCUAServer, Subscription } = require("node-opcua-server");
const { Variant, DataType } = require("node-opcua-variant");
const { StatusCodes } = require("node-opcua-status-code");

const port = parseInt(process.argv[2], 10);
const count = parseInt(process.argv[3], 10);
const slices = Math.max(1, parseInt(process.env.UPDATE_SLICES || "10", 10));
const FOLDER = 1000;

async function main() {
    if (!(count > 0)) throw new Error("usage: node load_server.js PORT N (N > 0)");
    Subscription.maxNotificationPerPublishHighLimit = parseInt(process.env.MAX_NOTIFICATIONS_PER_PUBLISH || "0", 10) ||
        Math.max(count, Subscription.maxNotificationPerPublishHighLimit);
    const server = new OPCUAServer({
        port,
        hostname: "127.0.0.1",
        alternateHostname: ["127.0.0.1"],
        resourcePath: "/l4e",
        buildInfo: { productName: "l4e-node-opcua-load" },
        allowAnonymous: true,
        serverCapabilities: {
            minSupportedSampleRate: 0,
            maxMonitoredItems: Math.max(count, 1000000),
            maxMonitoredItemsPerSubscription: Math.max(count, 100000),
            operationLimits: {
                maxNodesPerRead: Math.max(count, 10000),
                maxNodesPerBrowse: Math.max(count, 10000),
                maxNodesPerRegisterNodes: Math.max(count, 10000),
                maxNodesPerTranslateBrowsePathsToNodeIds: Math.max(count, 10000),
                maxMonitoredItemsPerCall: Math.max(count, 10000),
            },
        },
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const plant = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Plant" });

    const variables = new Array(count);
    let folder = null;
    for (let i = 0; i < count; i++) {
        if (i % FOLDER === 0) {
            const name = `F${String(i / FOLDER).padStart(3, "0")}`;
            folder = ns.addObject({ organizedBy: plant, typeDefinition: "FolderType", browseName: name, nodeId: `s=${name}` });
        }
        variables[i] = ns.addVariable({
            organizedBy: folder, browseName: `v${i}`, nodeId: `s=v${i}`, dataType: "Double",
            value: new Variant({ dataType: DataType.Double, value: 0 }),
        });
    }

    // One slice of the variables every 1000/slices ms, scheduled against the wall clock (no setInterval drift).
    const sliceMs = 1000 / slices;
    const perSlice = Math.ceil(count / slices);
    let tick = Math.floor(Date.now() / sliceMs) + 1;
    const step = () => {
        const slice = tick % slices;
        const k = Math.floor(tick / slices);
        const now = new Date();
        const end = Math.min(count, (slice + 1) * perSlice);
        for (let i = slice * perSlice; i < end; i++) {
            variables[i].setValueFromSource(
                new Variant({ dataType: DataType.Double, value: k + i / 1e6 }), StatusCodes.Good, now);
        }
        tick += 1;
        // a late slice runs at once (never skipped: every variable changes every second)
        setTimeout(step, Math.max(0, tick * sliceMs - Date.now()));
    };
    setTimeout(step, tick * sliceMs - Date.now());

    await server.start();
    process.stdout.write(`READY ${port}\n`);
    const stop = async () => { await server.shutdown(0); process.exit(0); };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
