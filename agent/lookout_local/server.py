"""The HTTP front and the embeddable service.

``LocalLookoutService`` owns the state (SQLite under ``state_dir``), the worker thread (ingestion,
training), the scheduler thread and a ThreadingHTTPServer speaking AWS JSON 1.0 on ``host:port``
(127.0.0.1 and an OS-chosen port by default), over HTTPS when given a TLS context; with ``db_url`` the state
is in PostgreSQL and the work goes to procrastinate workers instead of the two threads (fleet.py).
``start()`` returns once the socket listens; ``endpoint_url`` is then what a boto3 ``lookoutequipment``
client takes as ``endpoint_url``.

Per request: one copy of each header that decides anything (protocol.header_view, else 403), size limit
(MAX_BODY_BYTES, else 413), optional SigV4 check (403), X-Amz-Target →
operation (UnknownOperationException), JSON parse (SerializationException), model validation
(ValidationException), the operation, the response projected onto the output shape. Any unexpected
exception is logged and answered as InternalServerException (500), never as a traceback.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from agent.core.clock import SystemClock
from agent.core.errors import ConfigError
from agent.lookout_local import protocol
from agent.lookout_local.context import Context
from agent.lookout_local.errors import ApiError, InternalServerException, UnknownOperationException
from agent.lookout_local.operations import Operations
from agent.lookout_local.scheduler import Scheduler
from agent.lookout_local.sigv4 import verify
from agent.lookout_local.state import State
from agent.lookout_local.stores import Stores
from agent.lookout_local.validation import validate
from agent.lookout_local.worker import Worker

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # InlineDataSchema may be 1,000,000 characters, JSON-escaped


class _Handler(BaseHTTPRequestHandler):
    server_version = "l4e-lookout-local"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds: an idle keep-alive connection or a stalled body does not hold a thread forever
    # headers and body go out as two writes: with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms per call on Linux loopback)
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
        headers.setdefault("Content-Type", protocol.CONTENT_TYPE)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: ApiError) -> None:
        self._send(*protocol.error_body(error))

    def do_GET(self):  # health check for systemd/compose probes
        if self.path in ("/ping", "/health"):
            self._send(200, {"Content-Type": "application/json"}, b'{"status": "ok"}')
        else:
            self._error(ApiError("only POST / is served (AWS JSON 1.0)", "UnknownOperationException", 404))

    def do_POST(self):
        service: LocalLookoutService = self.server.service  # type: ignore[attr-defined]
        try:
            headers = protocol.header_view(self.headers.items())
        except ApiError as exc:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._error(exc)
        length_text = headers.get("content-length")
        try:
            length = int(length_text) if length_text is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return self._error(ApiError("Content-Length is required", "MissingContentLengthException", 411))
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._error(ApiError(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}",
                                        "RequestEntityTooLargeException", 413))
        body = self.rfile.read(length)
        try:
            status, out_headers, payload = 200, {}, service.handle(self.command, self.path, headers, body)
        except ApiError as exc:
            status, out_headers, payload = protocol.error_body(exc)
        except Exception:
            log.exception("unexpected error handling %s", headers.get("x-amz-target"))
            status, out_headers, payload = protocol.error_body(InternalServerException("internal error"))
        self._send(status, out_headers, payload)


HANDSHAKE_TIMEOUT_SECS = 10  # a client that opens a TLS connection and says nothing holds its thread this long


def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from a PEM certificate chain and its private key. Raises
    ConfigError naming --tls-cert/--tls-key when either cannot be read or they do not belong together."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: {exc}; allowed: a PEM certificate (chain) and "
                          "its PEM private key") from None
    return context


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer, optionally over TLS. The handshake runs in the connection's own thread with a
    timeout, never in the accepting thread, so a client that stalls it delays nobody else."""

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, address = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request, client_address) -> None:
        if self.tls is not None:
            try:
                request.settimeout(HANDSHAKE_TIMEOUT_SECS)
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:  # plain HTTP on the TLS port, a scanner, a timeout
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)


class LocalLookoutService:
    """The local L4E-compatible service, embeddable: ``start()``/``stop()``, ``endpoint_url``.

    state_dir: folder for SQLite state, ingested data (Parquet) and models (created if missing).
    store_url: ``file:///root/`` (bucket b = folder root/b) or ``s3`` (boto3, standard credential chain).
    clock: time source for the API's timestamps and the scheduler (default SystemClock).
    access_keys: {key id: secret}; when given, every request must carry a valid SigV4 signature, scoped to
    ``region`` (which the ARNs name too) and the ``lookoutequipment`` service.
    db_url: ``postgresql://…`` for fleet mode (state, queue, leases and the datasets' and models' files in
    PostgreSQL; ``state_dir`` then holds this host's copies); ``embedded_worker`` runs a FleetWorker in this
    process; ``lease_secs`` is how long a silent worker keeps its task. keep_executions_days: finished
    executions older than that are deleted (default: kept for ever). tls: a server SSLContext (``tls_context``)
    to serve HTTPS instead of HTTP.
    """

    def __init__(self, state_dir, store_url: str, host: str = "127.0.0.1", port: int = 0, clock=None,
                 access_keys: dict[str, str] | None = None, s3_client_factory=None, tick_secs: float = 0.2,
                 region: str = "us-east-1", db_url: str | None = None, embedded_worker: bool = True,
                 lease_secs: float | None = None, keep_executions_days: float | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.store_url = store_url
        self.host, self.port = host, port
        self.clock = clock or SystemClock()
        self.access_keys = dict(access_keys or {})
        self.region = region
        self._stores = Stores(store_url, s3_client_factory)
        self._tick_secs = tick_secs
        self.db_url = db_url
        self.embedded_worker = embedded_worker
        self.lease_secs = lease_secs
        self.keep_executions_days = keep_executions_days
        self.tls = tls
        self._httpd: _Server | None = None
        self._http_thread: threading.Thread | None = None
        self.ctx: Context | None = None
        self.worker: Worker | None = None
        self.scheduler: Scheduler | None = None
        self.operations: Operations | None = None

    @property
    def store_description(self) -> str:
        """Which store the service reads input from and writes results to, in words (start-up, logs)."""
        return self._stores.description

    @property
    def endpoint_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("service not started")
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls is not None else 'http'}://{host}:{port}"

    def start(self) -> LocalLookoutService:
        if self.db_url is None:
            self.ctx = Context(State(self.state_dir), self._stores, self.clock, self.state_dir, region=self.region,
                               keep_executions_days=self.keep_executions_days)
            self.worker = Worker(self.ctx)
            self.operations = Operations(self.ctx, self.worker.submit)
            self.scheduler = Scheduler(self.ctx, self._tick_secs)
            self.worker.start()
            self.scheduler.start()
        else:
            self._start_fleet()
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.tls = self.tls
        self._httpd.service = self  # type: ignore[attr-defined]
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                             name="l4e-local-http", daemon=True)
        self._http_thread.start()
        log.info("local Lookout for Equipment service on %s (state %s, store %s)", self.endpoint_url,
                 self.state_dir, self.store_description)
        return self

    def _start_fleet(self) -> None:
        """PostgreSQL state: this process is an API replica, and a worker too unless ``embedded_worker`` is
        False (then ``lookout worker`` processes do the work)."""
        from agent.lookout_local import fleet, migrate
        from agent.lookout_local.pgstate import PgState

        migrate.upgrade(self.db_url)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = PgState(self.db_url)
        self.ctx = Context(state, self._stores, self.clock, self.state_dir, region=self.region,
                           keep_executions_days=self.keep_executions_days)
        defer = fleet.deferrer(state)
        tasks = {"ingest": "l4e.ingest", "train": "l4e.train"}
        args = {"ingest": "job_id", "train": "model"}
        self.operations = Operations(self.ctx, lambda kind, ident: defer(tasks[kind], state.connection,
                                                                         **{args[kind]: ident}))
        if self.embedded_worker:
            self.worker = fleet.FleetWorker(self.ctx, self.db_url, tick_secs=self._tick_secs,
                                            lease_secs=self.lease_secs or fleet.DEFAULT_LEASE_SECS).start()

    def stop(self) -> None:
        """Stop serving, let the current window/job finish, close the state. Safe to call twice."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._http_thread.join(10)
            self._httpd = None
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.operations = None
        if self.ctx is not None:
            self.ctx.state.close()
            self.ctx = None

    def __enter__(self) -> LocalLookoutService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        """One API request → response body. ``headers`` is protocol.header_view's {lower-case name: value}: the
        signature check and the dispatcher read the very same values. Raises ApiError for anything the client
        must hear about."""
        operations = self.operations
        if operations is None:  # a kept-alive connection outliving stop()
            raise ApiError("the service is stopping", "ServiceUnavailableException", 503)
        if self.access_keys:
            verify(self.access_keys, method, path, headers, body, self.region)
        if path.split("?")[0] != "/":
            raise UnknownOperationException(f"path {path!r}: the API is served at POST /")
        op = protocol.operation_name(headers.get("x-amz-target"), set(Operations.names))
        model = protocol.service_model().operation_model(op)
        params = validate(model.input_shape, protocol.parse_body(body))
        result = operations.call(op, params)
        return protocol.encode(model.output_shape, json.loads(json.dumps(result)))
