"""Alarm hooks: deliver one Alarm transition somewhere. Built from [alarms.hooks.<name>] by build_hooks.

Every hook has ``name``, ``failures`` and ``delivered`` (counted by the AlarmEngine), ``deadline_secs`` (the
longest one ``fire`` may take, retries included; the engine cancels it after that), and
``async fire(alarm)``, which returns after a successful delivery and raises HookError when it gives up. Every
payload is the same JSON object (agent.alarms.hook_config.alarm_to_dict): the Alarm's fields plus ``time``.

    exec        argv (never a shell), alarm JSON on stdin; a minimal environment: PATH, LANG, the L4E_* alarm
                variables, the hook's ``env`` and the agent's variables it names in ``pass_env``, nothing else
                (never the agent's AWS credentials); killed (process group) at timeout_secs; a non-zero exit is
                a failure, its stderr in the error (the last 64 KiB kept, at most 1,000 characters logged). At
                most max_concurrency runs at once.
    webhook     HTTP POST via urllib in a worker thread; retries on connection errors, timeouts, 429 and 5xx
                with capped backoff; never follows redirects (a POST turned GET would lose the alarm);
                optional ``X-L4E-Signature: sha256=<hex>`` = HMAC-SHA256(secret, body).
    file        one JSON line appended per transition, fsynced.
    log         one line on the logger ``l4e.alarms``.
    write_back  ``writer(raise_value)`` on raise, ``writer(clear_value)`` on clear. The writer comes from
                agent.runtime.asset (built from the connectors; this module never imports them). A hook shared
                by several rules writes clear_value on any clear: give each rule its own output if that
                matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.alarms.config import AlarmsConfig
from agent.alarms.hook_config import (
    AlarmHook,
    ExecHookConfig,
    FileHookConfig,
    HookError,
    LogHookConfig,
    WebhookHookConfig,
    WriteBackHookConfig,
    alarm_json,
)
from agent.core.clock import Backoff
from agent.core.errors import ConfigError, ConnectorError
from agent.core.model import Alarm
from agent.core.secrets import secret_path

log = logging.getLogger("l4e.alarms")

Writer = Callable[[Any], Awaitable[None]]
"""Writes one value to the PLC; raises on failure. Built per write_back hook by agent.runtime.asset."""

WriterFactory = Callable[[WriteBackHookConfig], Writer]

_KILL_GRACE_SECS = 5.0  # time for a killed process group to be reaped before the engine's guard fires
STDERR_KEEP_BYTES = 64 * 1024  # an exec hook's stderr kept in memory: its last 64 KiB (a chatty hook is drained)
STDERR_LOG_CHARS = 1000  # of which at most this much goes into the failure's log line
_DEFAULT_LANG = "C.UTF-8"


class _Counters:
    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.delivered = 0


def _stderr_note(stderr: bytes, omitted: int) -> str:
    """': <stderr>' for a failure message, at most STDERR_LOG_CHARS characters of its end, saying how much is
    left out; '' when there was none."""
    text = stderr.decode(errors="replace").strip()
    if not text:
        return ""
    if len(text) > STDERR_LOG_CHARS:
        omitted += len(text[:-STDERR_LOG_CHARS].encode())
        text = text[-STDERR_LOG_CHARS:]
    return f": [stderr truncated: its first {omitted} bytes not shown] {text}" if omitted else f": {text}"


def _resolve(path: Path, base_dir: Path) -> Path:
    return path if path.is_absolute() else base_dir / path


class ExecHook(_Counters):
    """Runs a program per transition. Environment, and nothing else: PATH and LANG (the agent's; else the
    system's default path and C.UTF-8), the agent's variables named in ``pass_env`` that are set, the hook's
    ``env``, then L4E_ALARM_ID, L4E_ALARM_STATE, L4E_ALARM_RULE, L4E_ASSET, L4E_ALARM_SCORE (empty when the
    alarm has no score). ``last_stderr``: the last run's stderr, its last STDERR_KEEP_BYTES bytes."""

    def __init__(self, name: str, config: ExecHookConfig, base_dir: Path) -> None:
        super().__init__(name)
        self.config = config
        program = config.argv[0]
        if "/" in program and not os.path.isabs(program):
            program = str(base_dir / program)  # "scripts/horn.py" next to the asset file, not the agent's cwd
        self.argv = [program, *config.argv[1:]]
        # Waiting for a free slot counts against the deadline too: max_concurrency full runs may be ahead.
        self.deadline_secs = config.timeout_secs * 2 + _KILL_GRACE_SECS * 2
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self.last_stderr = b""

    async def fire(self, alarm: Alarm) -> None:
        async with self._slots:
            await self._run(alarm)

    def _env(self, alarm: Alarm) -> dict[str, str]:
        base = {"PATH": os.environ.get("PATH") or os.defpath, "LANG": os.environ.get("LANG") or _DEFAULT_LANG}
        passed = {name: os.environ[name] for name in self.config.pass_env if name in os.environ}
        return {
            **base,
            **passed,
            **self.config.env,
            "L4E_ALARM_ID": alarm.id,
            "L4E_ALARM_STATE": alarm.state,
            "L4E_ALARM_RULE": alarm.rule,
            "L4E_ASSET": alarm.asset,
            "L4E_ALARM_SCORE": "" if alarm.score is None else repr(alarm.score),
        }

    async def _run(self, alarm: Alarm) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(alarm),
                start_new_session=True,  # its own process group, so a timeout kills its children too
            )
        except OSError as exc:
            raise HookError(f"exec {self.argv[0]}: {exc}") from exc
        try:
            stderr, omitted = await asyncio.wait_for(self._talk(proc, alarm_json(alarm)), self.config.timeout_secs)
        except TimeoutError:
            await self._kill(proc)
            raise HookError(
                f"exec {self.argv[0]}: no exit after {self.config.timeout_secs:g} s; killed"
            ) from None
        except BaseException:  # cancelled by the engine's guard or shutdown: leave no process behind
            await self._kill(proc)
            raise
        self.last_stderr = stderr
        if proc.returncode != 0:
            raise HookError(f"exec {self.argv[0]}: exit status {proc.returncode}" + _stderr_note(stderr, omitted))

    @staticmethod
    async def _talk(proc: asyncio.subprocess.Process, payload: bytes) -> tuple[bytes, int]:
        """Write the payload to stdin, drain stderr to EOF keeping its last STDERR_KEEP_BYTES, wait for the
        exit. Returns (kept stderr, bytes of stderr not kept)."""
        async def feed() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may not read its stdin
                proc.stdin.write(payload)
                await proc.stdin.drain()
            proc.stdin.close()

        writer = asyncio.create_task(feed())
        kept = bytearray()
        omitted = 0
        try:
            while chunk := await proc.stderr.read(65536):
                kept += chunk
                if len(kept) > STDERR_KEEP_BYTES:
                    omitted += len(kept) - STDERR_KEEP_BYTES
                    del kept[:len(kept) - STDERR_KEEP_BYTES]
            await proc.wait()
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return bytes(kept), omitted

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # in case it left its process group
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _KILL_GRACE_SECS)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib would re-send a POST as a GET without the body; make 3xx a failure instead


class _Retriable(Exception):
    pass


class WebhookHook(_Counters):
    """POSTs the alarm JSON. Headers: Content-Type, User-Agent, X-L4E-Alarm-Id, X-L4E-Alarm-State (receivers
    de-duplicate on the last two: delivery is at-least-once), the configured ones, and X-L4E-Signature."""

    def __init__(self, name: str, config: WebhookHookConfig, base_dir: Path) -> None:
        super().__init__(name)
        self.config = config
        # a file, or a systemd credential (credential:NAME); checked when the asset file was loaded
        self.secret_path = None if config.secret_file is None else secret_path(config.secret_file, base_dir)
        attempts = config.retries + 1
        self.deadline_secs = (
            attempts * (config.timeout_secs * 2 + 1) + config.retries * config.backoff_max_secs
        )
        handlers: list[Any] = [_NoRedirect()]
        if not config.use_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    async def fire(self, alarm: Alarm) -> None:
        body = alarm_json(alarm)
        headers = await asyncio.to_thread(self._headers, alarm, body)  # reads the secret: may block
        backoff = Backoff(self.config.backoff_initial_secs, self.config.backoff_max_secs)
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(backoff.next())  # wall time: this is about the network, not the plant
            try:
                await asyncio.to_thread(self._post, body, headers)
                return
            except _Retriable as exc:
                last = exc
        raise HookError(
            f"webhook {self.config.url}: gave up after {self.config.retries + 1} attempts: {last}"
        )

    def _headers(self, alarm: Alarm, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"l4e-agent/{__version__}",
            "X-L4E-Alarm-Id": alarm.id,
            "X-L4E-Alarm-State": alarm.state,
            **self.config.headers,
        }
        if self.secret_path is not None:
            try:
                secret = self.secret_path.read_bytes().strip()
            except OSError as exc:
                # Sending unsigned would be rejected (or, worse, accepted): fail the delivery instead.
                raise HookError(f"webhook secret {self.secret_path}: {exc}") from exc
            digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
            headers["X-L4E-Signature"] = f"sha256={digest}"
        return headers

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """One attempt (blocking). Raises _Retriable or HookError (final)."""
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_secs) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 429 or exc.code >= 500:
                raise _Retriable(f"HTTP {exc.code}") from None
            raise HookError(f"webhook {self.config.url}: HTTP {exc.code} (not retried)") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            raise _Retriable(str(getattr(exc, "reason", exc))) from None


class FileHook(_Counters):
    """Appends one JSON line per transition (the same object the other hooks send), fsynced."""

    deadline_secs = 30.0

    def __init__(self, name: str, config: FileHookConfig, base_dir: Path) -> None:
        super().__init__(name)
        self.path = _resolve(config.path, base_dir)
        self._lock = asyncio.Lock()  # whole lines, in delivery order

    async def fire(self, alarm: Alarm) -> None:
        line = alarm_json(alarm) + b"\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                raise HookError(f"file {self.path}: {exc}") from exc

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


class LogHook(_Counters):
    """One line on ``l4e.alarms``: raised at WARNING (ERROR when critical), cleared at INFO. The JSON payload
    is in the message and, for structured handlers, in the record's ``alarm`` attribute."""

    deadline_secs = 5.0

    def __init__(self, name: str, config: LogHookConfig) -> None:
        super().__init__(name)

    async def fire(self, alarm: Alarm) -> None:
        if alarm.state == "cleared":
            level = logging.INFO
        else:
            level = logging.ERROR if alarm.severity == "critical" else logging.WARNING
        text = alarm_json(alarm).decode()
        log.log(level, "alarm %s %s", alarm.state, text, extra={"alarm": json.loads(text)})


class WriteBackHook(_Counters):
    """Writes raise_value / clear_value through an injected writer, with a timeout and bounded retries."""

    def __init__(self, name: str, config: WriteBackHookConfig, writer: Writer) -> None:
        super().__init__(name)
        self.config = config
        self._writer = writer
        self.deadline_secs = (
            (config.retries + 1) * config.timeout_secs + config.retries * config.backoff_max_secs + 5
        )

    async def fire(self, alarm: Alarm) -> None:
        value = self.config.raise_value if alarm.state == "raised" else self.config.clear_value
        backoff = Backoff(self.config.backoff_initial_secs, self.config.backoff_max_secs)
        last: BaseException | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(backoff.next())
            try:
                await asyncio.wait_for(self._writer(value), self.config.timeout_secs)
                return
            except (ConnectorError, OSError, TimeoutError) as exc:  # the connector's errors: "not written"
                last = exc
        raise HookError(
            f"write_back via {self.config.source}: gave up after {self.config.retries + 1} attempts: {last!r}"
        )


def build_hooks(
    config: AlarmsConfig, base_dir: Path, writer_factory: WriterFactory | None = None
) -> dict[str, AlarmHook]:
    """One hook per [alarms.hooks.<name>]. ``base_dir``: the asset file's folder (relative paths).

    ``writer_factory(hook_config)`` returns the async ``writer(value)`` of a write_back hook; it is required
    when one is configured. No I/O here: files, processes and connections are touched on ``fire``.
    """
    hooks: dict[str, AlarmHook] = {}
    for name, hook_config in config.hooks.items():
        match hook_config:
            case ExecHookConfig():
                hooks[name] = ExecHook(name, hook_config, base_dir)
            case WebhookHookConfig():
                hooks[name] = WebhookHook(name, hook_config, base_dir)
            case FileHookConfig():
                hooks[name] = FileHook(name, hook_config, base_dir)
            case LogHookConfig():
                hooks[name] = LogHook(name, hook_config)
            case WriteBackHookConfig():
                if writer_factory is None:
                    raise ConfigError("write_back hooks need a writer factory", key=f"alarms.hooks.{name}")
                hooks[name] = WriteBackHook(name, hook_config, writer_factory(hook_config))
    return hooks
