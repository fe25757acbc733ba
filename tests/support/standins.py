"""Real loopback stand-ins for the business flows: Z-API (HTTP, answering like the published
samples) and an SMTP server (aiosmtpd) that keeps every message it accepts."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.receiver import Received, Receiver, Reply

INSTANCE = "INST123"
TOKEN = "TOK456"
CLIENT_TOKEN = "CLIENT789"
ZAPI_PREFIX = f"/instances/{INSTANCE}/token/{TOKEN}/"


def zapi_ok(req: Received, n: int) -> Reply:
    """Z-API's documented success answer, with ids unique per request."""
    return Reply(200, json.dumps({"zaapId": f"ZAAP{n}", "messageId": f"MSG{n}", "id": f"MSG{n}"}))


def zapi_env(receiver: Receiver) -> dict[str, str]:
    return {
        "ZAPI_BASE_URL": receiver.url(""),
        "ZAPI_INSTANCE_ID": INSTANCE,
        "ZAPI_TOKEN": TOKEN,
        "ZAPI_CLIENT_TOKEN": CLIENT_TOKEN,
    }


def sends(receiver: Receiver) -> list[Received]:
    return [r for r in receiver.requests if r.path.startswith(ZAPI_PREFIX)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}":
                # SMTP carries CRLF line ends; compare with what the template wrote.
                return str(part.get_content()).replace("\r\n", "\n")
        raise AssertionError(f"no text/{subtype} part")


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.sink.refuse is not None:
            return self.sink.refuse(address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.sink.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted"


class SmtpSink:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.refuse: Callable[[str], str] | None = None
        self.port = free_port()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def env(self) -> dict[str, str]:
        return {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.port),
            "SMTP_STARTTLS": "false",
            "MAIL_FROM": "Carinho <contato@carinho.com.br>",
            "SMTP_TIMEOUT_S": "2",
        }

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Mail]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.mails) >= count:
                return list(self.mails)
            time.sleep(0.02)
        raise AssertionError(f"SMTP got {len(self.mails)} messages, expected {count}")


@contextlib.contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    try:
        yield sink
    finally:
        sink.controller.stop()
