"""Loopback stand-ins for Slack and PagerDuty (http.server in a thread) and for an SMTP relay (aiosmtpd).

Both record exactly what they received (path, headers, body bytes, arrival time) so tests can assert on
payloads, dedup keys, timing and the absence of patient data.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from dicom_backup_dagster.sandbox.processes import free_port


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    delay_s: float = 0.0


class CaptureServer:
    """ThreadingHTTPServer on 127.0.0.1:<free port>; `answers[path]` chooses status, body and delay."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: dict[str, Answer] = {}
        self.default = Answer()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                owner.requests.append(Request(self.path, dict(self.headers), body, time.monotonic()))
                answer = owner.answers.get(self.path, owner.default)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class SmtpCapture:
    messages: list[Message] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 at a free port (Controller(port=0) cannot probe its own readiness)."""

    def __init__(self) -> None:
        self.capture = SmtpCapture()
        self.port = free_port()
        self.controller = Controller(self.capture, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
