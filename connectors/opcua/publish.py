"""Subscriptions served by our own publish loop, on asyncua's transport (``client.uaclient.protocol``).

Why our own loop: asyncua's publish loop decodes every PublishResponse into objects (about 8 µs a value);
ours decodes with connectors.opcua.publish_codec (under 1 µs a value) and keeps ``outstanding`` publish
requests at the server, so a server that has more to send (MoreNotifications) never waits for our round trip.

Contract:
- :func:`create_subscription` sends CreateSubscription and returns asyncua's ``CreateSubscriptionResult``; no
  callback is registered with asyncua, so asyncua never starts its own publish loop for this session.
- :class:`PublishLoop` ``run()`` sends PublishRequests (acknowledging every NotificationMessage it received)
  and awaits ``handle(publish)`` for every response, in arrival order; a slow ``handle`` holds the next publish
  request back, so the server (not this process) buffers, as OPC-UA intends. ``run()`` returns only by raising
  :class:`agent.core.errors.ConnectionLost` (session or subscription gone, transport closed, a response that
  cannot be decoded) or being cancelled. A publish request the server times out (BadTimeout) is simply sent
  again; BadTooManyPublishRequests lowers the number kept outstanding (never below one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from asyncua import Client, ua
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import BadTimeout, BadTooManyPublishRequests

from agent.core.errors import ConnectionLost
from connectors.opcua.publish_codec import Publish, PublishDecodeError, decode_publish_response

DEFAULT_OUTSTANDING = 2


def _protocol(client: Client):
    protocol = client.uaclient.protocol
    if protocol is None:
        raise ConnectionLost("connection closed")
    return protocol


async def create_subscription(client: Client, params: ua.CreateSubscriptionParameters,
                              timeout: float | None = None) -> ua.CreateSubscriptionResult:
    """CreateSubscription on the session of ``client`` (raises asyncua's UaStatusCodeError on refusal)."""
    request = ua.CreateSubscriptionRequest()
    request.Parameters = params
    data = await _protocol(client).send_request(request, timeout)
    response = struct_from_binary(ua.CreateSubscriptionResponse, data)
    response.ResponseHeader.ServiceResult.check()
    return response.Parameters


class PublishLoop:
    """See the module docstring. ``handle`` is awaited once per PublishResponse (keep-alives included)."""

    def __init__(self, client: Client, handle: Callable[[Publish], Awaitable[None]],
                 outstanding: int = DEFAULT_OUTSTANDING) -> None:
        self._client = client
        self._handle = handle
        self._wanted = max(1, outstanding)
        self._acks: list[ua.SubscriptionAcknowledgement] = []
        self.responses = 0
        self.decode_errors = 0

    async def run(self) -> None:
        tasks = {asyncio.create_task(self._requester()) for _ in range(self._wanted)}
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                failures = [task.exception() for task in done if task.exception() is not None]
                if failures:
                    raise failures[0]  # the others (retrieved above) say the same: the session is gone
            raise ConnectionLost("publish loop ended")  # unreachable in practice: one requester always stays
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _requester(self) -> None:
        """One outstanding publish request at a time; several of these run side by side."""
        protocol = _protocol(self._client)
        while True:
            request = ua.PublishRequest()
            request.Parameters.SubscriptionAcknowledgements, self._acks = self._acks, []
            try:
                data = await protocol.send_request(request, 0)  # 0: no client timeout; the stale timer watches
            except BadTimeout:
                continue  # the server gave up on this request (nothing was sent, nothing to ack)
            except BadTooManyPublishRequests:
                if self._wanted > 1:
                    self._wanted -= 1
                    return  # keep one fewer outstanding; the other requesters go on
                await asyncio.sleep(0.1)
                continue
            except ua.UaStatusCodeError as exc:  # BadNoSubscription, BadSessionClosed, BadSessionIdInvalid, ...
                raise ConnectionLost(f"publish refused ({type(exc).__name__})") from exc
            except (ConnectionError, OSError, ua.UaError) as exc:
                raise ConnectionLost(f"publish failed ({type(exc).__name__}: {exc})") from exc
            try:
                publish = decode_publish_response(data)
            except PublishDecodeError as exc:
                self.decode_errors += 1
                raise ConnectionLost(f"a PublishResponse could not be decoded ({exc})") from exc
            self.responses += 1
            if publish.has_notifications:
                self._acks.append(ua.SubscriptionAcknowledgement(SubscriptionId=publish.subscription_id,
                                                                 SequenceNumber=publish.sequence_number))
            await self._handle(publish)
