"""The agent's one HTTP listener: ``/metrics``, ``/healthz``, the status page ``/`` and ``/api/status``.

``GET /metrics`` is prometheus_client's exposition of the registry (agent.runtime.metrics, collected at
scrape time on the event loop, where the state it reads lives); ``GET /healthz`` is 200 ``ok`` or 503 with
the reason from an injected ``health() -> (ok, reason)``; given a ``status() -> dict`` provider, ``GET /``
is the status page (agent.runtime.status_page) and ``GET /api/status`` the same data as JSON (documented in
agent.runtime.status_data). It binds 127.0.0.1 by default. Bound to any other address it requires a token
(``[metrics] token_file``; a configuration without one is refused at load, exit 78): every request must
then carry ``Authorization: Bearer <token>`` (or HTTP Basic with the token as the password, so a browser
can ask for it), else 401.

The server is asyncio's: HTTP/1.1, GET and HEAD, one request per connection, only the request line and
the Authorization header read (a request that does not parse is 400, a client that sends nothing complete
within 5 s is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CollectorRegistry

from agent.runtime.metrics import CONTENT_TYPE, render
from agent.runtime.metrics_config import MetricsConfig, is_loopback, read_token

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, str]]
"""Returns (ok, reason); reason is shown with 503 when not ok."""

_TEXT = "text/plain; charset=utf-8"
_REQUEST_TIMEOUT_SECS = 5.0  # a client that sends no complete request in this time is dropped
_MAX_HEADER_LINES = 100
_LINE_LIMIT = 8192  # bytes per request or header line; no legitimate scraper sends more


class MetricsServer:
    """Serves the routes above on ``host:port``. Use as ``async with MetricsServer(...) as server:`` or call
    :meth:`start`/:meth:`stop`."""

    def __init__(self, registry: CollectorRegistry, health: Health, *, host: str = "127.0.0.1", port: int = 9108,
                 status: Callable[[], dict] | None = None, token: str | None = None) -> None:
        if token is None and not is_loopback(host):
            raise ValueError(f"metrics: host {host!r} is not loopback and no token is set")
        self.registry = registry
        self.health = health
        self.host = host
        self.requested_port = port
        self.status = status
        self._token = token
        self._server: asyncio.Server | None = None
        self.failures: Counter[str] = Counter()  # path → requests answered 500 (a bug in rendering)

    @classmethod
    def from_config(cls, config: MetricsConfig, registry: CollectorRegistry, health: Health,
                    status: Callable[[], dict] | None = None) -> MetricsServer:
        token = read_token(config.token_file) if config.token_file is not None else None
        return cls(registry, health, host=config.host, port=config.port, status=status, token=token)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0). Only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("metrics server is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Bind and start serving in the background. Raises OSError when the port is taken."""
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port, limit=_LINE_LIMIT)

    async def stop(self) -> None:
        """Stop listening and wait for the server to close."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SECS):
                method, path, authorization = await _read_request(reader)
            try:
                if not self._authorized(authorization):
                    status, content_type, body = 401, _TEXT, b"token required\n"
                else:
                    status, content_type, body = self._respond(method, path)
            except Exception:  # supervision boundary: a bug in rendering still gets an answer, and its traceback
                # once per path: a scraper hits the same bug every few seconds; later failures are counted
                # (under a bounded number of keys: the path comes from the client)
                key = path.partition("?")[0][:200]
                if key not in self.failures and len(self.failures) >= 32:
                    key = "(other paths)"
                self.failures[key] += 1
                log.log(logging.ERROR if self.failures[key] == 1 else logging.DEBUG,
                        "metrics request %s %s failed (%d time(s))", method, path, self.failures[key],
                        exc_info=self.failures[key] == 1)
                status, content_type, body = 500, _TEXT, b"internal error\n"
            await _write_response(writer, status, content_type, body, head_only=method == "HEAD")
        except _BadRequest as exc:
            with contextlib.suppress(ConnectionError):  # the client may be gone already
                await _write_response(writer, 400, _TEXT, f"{exc}\n".encode(), head_only=False)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, render(self.registry).encode()
        if path == "/healthz":
            ok, reason = self._check_health()
            return (200 if ok else 503), _TEXT, (("ok" if ok else reason) + "\n").encode()
        if path in ("/", "/index.html") and self.status is not None:
            from agent.runtime.status_page import render_page

            return 200, "text/html; charset=utf-8", render_page(self.status()).encode()
        if path == "/api/status" and self.status is not None:
            return 200, "application/json", json.dumps(self.status(), allow_nan=False).encode()
        return 404, _TEXT, b"not found: try /, /api/status, /metrics or /healthz\n"

    def _authorized(self, authorization: str) -> bool:
        """No token configured, or the request carries it (Bearer, or Basic with it as the password)."""
        if self._token is None:
            return True
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.encode(), self._token.encode())

    def _check_health(self) -> tuple[bool, str]:
        try:
            ok, reason = self.health()
        except Exception as exc:  # supervision boundary: a broken check is itself a reason to report unhealthy
            log.debug("health check raised", exc_info=True)  # the watchdog gate logs the transition with it
            return False, f"health check raised {type(exc).__name__}: {exc}"
        return bool(ok), reason or "unhealthy"


class _BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, str]:
    """Read the request line and headers; return (method, path without the query string, the Authorization
    header or "")."""
    raw = await _read_line(reader)
    if not raw:  # closed before sending anything (a browser's speculative preconnect): nothing to answer
        raise ConnectionResetError("no request")
    parts = raw.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest("malformed request line")
    authorization = ""
    for _ in range(_MAX_HEADER_LINES):
        line = await _read_line(reader)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "authorization":
            authorization = value.strip()
    else:
        raise _BadRequest("too many header lines")
    method, target, _version = parts
    return method, target.split("?", 1)[0], authorization


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError as exc:  # StreamReader's limit exceeded
        raise _BadRequest("request line or header too long") from exc


async def _write_response(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *, head_only: bool
) -> None:
    headers = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
    )
    if status == 405:
        headers += "Allow: GET, HEAD\r\n"
    if status == 401:  # Basic makes a browser ask; Bearer is what scripts and Prometheus send
        headers += 'WWW-Authenticate: Basic realm="l4e-agent", charset="UTF-8"\r\n'
    writer.write((headers + "\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
