"""The large plant of the scale benchmark (tests/peers/node_opcua/load_server.js, node-opcua): every variable
changes every second, and one subscription gets a whole second of changes in one PublishResponse (node-opcua caps
a publish at 1,000 notifications unless raised), so the plant is not what limits a benchmark."""

from __future__ import annotations

import asyncio
import time

from asyncua import Client, ua

from tests.connectors.node_opcua_peer import NodeOpcUaPeer

N = 2000


async def test_the_load_plant_changes_every_variable_every_second_through_one_subscription():
    peer = await NodeOpcUaPeer(script="load_server.js", args=(str(N),)).start()
    client = Client(peer.endpoint, timeout=30)
    try:
        await client.connect()
        values: dict[int, set[float]] = {h: set() for h in range(N)}
        publishes: list[int] = []

        async def on_publish(result: ua.PublishResult) -> None:
            for notification in result.NotificationMessage.NotificationData or []:
                if isinstance(notification, ua.DataChangeNotification):
                    publishes.append(len(notification.MonitoredItems))
                    for item in notification.MonitoredItems:
                        values[item.ClientHandle].add(item.Value.Value.Value)

        params = ua.CreateSubscriptionParameters(RequestedPublishingInterval=1000, RequestedLifetimeCount=60,
                                                 RequestedMaxKeepAliveCount=10, MaxNotificationsPerPublish=0,
                                                 PublishingEnabled=True, Priority=0)
        sub = await client.uaclient.create_subscription(params, on_publish)
        items = [ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=ua.NodeId.from_string(f"ns=1;s=v{i}"),
                                         AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=i, SamplingInterval=0, QueueSize=1,
                                                        DiscardOldest=True))
            for i in range(N)]
        created = await client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub.SubscriptionId, TimestampsToReturn=ua.TimestampsToReturn.Both, ItemsToCreate=items))
        assert all(r.StatusCode.is_good() for r in created)
        deadline = time.monotonic() + 20  # three changes of every variable take ~3 s; bounded for a loaded box
        while min(len(v) for v in values.values()) < 3:
            assert time.monotonic() < deadline, f"{sum(len(v) < 3 for v in values.values())} variables stalled"
            await asyncio.sleep(0.2)
        # a second of changes (N) fits one publish: more than node-opcua's default cap of 1,000
        assert max(publishes) > 1000
    finally:
        await client.disconnect()
        await peer.stop()
