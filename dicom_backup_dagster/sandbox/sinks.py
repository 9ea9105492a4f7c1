"""Loopback stand-ins for the three notification channels, so that a sandbox night pages somebody.

One process (`python -m dicom_backup_dagster.sandbox.sinks DIR HTTP_PORT SMTP_PORT`) answers, on 127.0.0.1:
- `POST /slack`: a Slack incoming webhook (answers 200 "ok"),
- `POST /pagerduty`: the PagerDuty Events API v2 enqueue endpoint (answers 202 with a dedup_key),
- SMTP on SMTP_PORT (aiosmtpd, no TLS, no login): the alert e-mails.

Every message is appended as one JSON line to DIR/slack.jsonl, DIR/pagerduty.jsonl or DIR/email.jsonl
(e-mails as subject + text body), which the sandbox prints as "where to read the alerts".
"""

from __future__ import annotations

import json
import sys
import threading
import time
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHANNEL_FILES = {"/slack": "slack.jsonl", "/pagerduty": "pagerduty.jsonl"}


class _Journal:
    """Appends one JSON line per message; one lock for the HTTP threads and the SMTP loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lock = threading.Lock()

    def write(self, name: str, entry: dict[str, Any]) -> None:
        line = json.dumps({"received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry})
        with self.lock, (self.directory / name).open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _http_server(journal: _Journal, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            name = CHANNEL_FILES.get(self.path)
            if name is None:
                self.send_error(404, "only /slack and /pagerduty are served")
                return
            try:
                payload: Any = json.loads(body)
            except ValueError:
                payload = body.decode("utf-8", "replace")
            journal.write(name, {"payload": payload})
            if self.path == "/pagerduty":
                key = payload.get("dedup_key", "") if isinstance(payload, dict) else ""
                self._answer(202, {"status": "success", "message": "Event processed", "dedup_key": key})
            else:
                self._answer(200, "ok")

        def _answer(self, status: int, body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


class _SmtpHandler:
    def __init__(self, journal: _Journal) -> None:
        self.journal = journal

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(preferencelist=("plain",))
        self.journal.write(
            "email.jsonl",
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "subject": str(message.get("Subject", "")),
                "text": body.get_content() if body is not None else "",
            },
        )
        return "250 OK"


def serve(directory: Path, http_port: int, smtp_port: int) -> None:
    """Serve until the process is stopped (the sandbox stops it by PID with the other peers)."""
    from aiosmtpd.controller import Controller

    directory.mkdir(parents=True, exist_ok=True)
    journal = _Journal(directory)
    smtp = Controller(_SmtpHandler(journal), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        _http_server(journal, http_port).serve_forever(poll_interval=0.2)
    finally:
        smtp.stop()


def read(directory: Path, channel: str) -> list[dict[str, Any]]:
    """Every message one channel ("slack", "pagerduty" or "email") received, oldest first."""
    path = directory / f"{channel}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
