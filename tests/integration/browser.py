"""Headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol, standard library only.

``load(url)`` starts a fresh browser (own profile folder, no network services of its own), opens ``url`` in a
page, waits for the load event, and returns what a person would see and what the console said: the DOM
after load (``document.documentElement.outerHTML``), the visible text (``innerText``), and every console
message of level error/warning, uncaught exception and browser log entry of level error (failed
requests, SVG attribute parse errors, ...). A minimal WebSocket client (RFC 6455, text frames) carries the
protocol; the browser is killed when done. Chromium is required (``make system-deps`` installs it): a missing
binary is a failure, not a skip.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


def chromium_binary() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise RuntimeError("chromium is required for the browser tests (apt-get install chromium)")
    return path


class WebSocket:
    """Just enough of a WebSocket client for the DevTools protocol (text frames, client-side masking)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self._buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping/pong: not sent by Chromium to a client that does not ping
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageLoad:
    dom: str
    text: str
    problems: list[str] = field(default_factory=list)  # console errors/warnings, exceptions, error log entries


def load(url: str, timeout: float = 60.0, settle_secs: float = 0.5) -> PageLoad:
    """Open ``url`` in a fresh headless Chromium; see the module docstring."""
    profile = tempfile.mkdtemp(prefix="l4e-chromium-")
    proc = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        port = None
        while port is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode} before DevTools listened")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not start DevTools in time")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = [t for t in json.load(resp) if t.get("type") == "page"]
        ws = WebSocket(targets[0]["webSocketDebuggerUrl"], timeout=max(1.0, deadline - time.monotonic()))
        try:
            return _drive(ws, url, deadline, settle_secs)
        finally:
            ws.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()  # not read to EOF: chromium's helper processes may hold the pipe open a while
        shutil.rmtree(profile, ignore_errors=True)


def _drive(ws: WebSocket, url: str, deadline: float, settle_secs: float) -> PageLoad:
    ids = iter(range(1, 1_000_000))
    problems: list[str] = []
    answers: dict[int, dict] = {}
    loaded_at: list[float] = []

    def note(event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append("console." + params["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            problems.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            problems.append(f"log.{entry['level']} ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif method == "Page.loadEventFired":
            loaded_at.append(time.monotonic())

    def call(method: str, **params) -> dict:
        msg_id = next(ids)
        ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while msg_id not in answers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {method}")
            msg = json.loads(ws.recv())
            if "id" in msg:
                answers[msg["id"]] = msg
            else:
                note(msg)
        answer = answers.pop(msg_id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    for domain in ("Page", "Runtime", "Log"):
        call(f"{domain}.enable")
    call("Page.navigate", url=url)
    while not loaded_at or time.monotonic() < loaded_at[0] + settle_secs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not load in time")
        call("Runtime.evaluate", expression="1")  # a round trip: events that arrived meanwhile are noted
        time.sleep(0.05)
    dom = call("Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True)
    text = call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
    return PageLoad(dom["result"]["value"], text["result"]["value"], problems)
