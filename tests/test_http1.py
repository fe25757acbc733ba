"""The webhook adapter's own HTTP/1.1 client against raw loopback servers that answer with
exact bytes: framing (length, chunked, close-delimited, interim 1xx), keep-alive reuse,
resets, timeouts, oversized and compressed answers, and the signed request it sends."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import pytest
from pydantic import SecretStr

from carinho_outbox import signing
from carinho_outbox.adapters.http1 import ConnectionFailed, Http1Client, Target
from carinho_outbox.adapters.webhook import SharedSession, WebhookAdapter
from carinho_outbox.records import Job
from carinho_outbox.settings import DestinationConfig

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """Reads one request at a time per connection and lets the test's `answer` reply."""

    answer: Answer
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.answer(head + body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/hook") -> Target:
        return Target.parse(f"http://127.0.0.1:{self.port}{path}")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(answer: Answer) -> RawServer:
        raw = RawServer(answer)
        raw.server = await asyncio.start_server(raw._handle, "127.0.0.1", 0)
        raw.port = raw.server.sockets[0].getsockname()[1]
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


def reply(raw: bytes) -> Answer:
    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return answer


def request(body: bytes = b'{"x":1}', path: str = "/hook") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )


def client(keep: int = 4096) -> Http1Client:
    return Http1Client(max_idle_per_origin=10, keep_bytes=keep)


async def test_length_framed_answers_reuse_one_connection(serve) -> None:
    raw = await serve(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}"))
    http = client()
    pool = http.pool(raw.url())
    answers = [await pool.request(request(), 5.0) for _ in range(3)]
    assert [(a.status, a.body) for a in answers] == [(200, b'{"a":1}')] * 3
    assert raw.connections == 1
    assert raw.requests[0] == request()
    http.close()


async def test_chunked_close_delimited_and_interim_answers(serve) -> None:
    chunked = await serve(reply(
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"))
    http = client()
    a = await http.pool(chunked.url()).request(request(), 5.0)
    assert (a.status, a.body) == (201, b"abcdefg")

    async def close_delimited(_r: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\nupstream down")
        await writer.drain()
        writer.close()

    closing = await serve(close_delimited)
    pool = http.pool(closing.url())
    for _ in range(2):  # the closed connection is not reused
        a = await pool.request(request(), 5.0)
        assert (a.status, a.body) == (502, b"upstream down")
    assert closing.connections == 2

    interim = await serve(reply(
        b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"))
    a = await http.pool(interim.url()).request(request(), 5.0)
    assert (a.status, a.body, a.retry_after) == (429, b"", "7")
    http.close()


async def test_reset_before_an_answer_is_a_connection_failure(serve) -> None:
    async def reset(_r: bytes, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    raw = await serve(reset)
    http = client()
    with pytest.raises(ConnectionFailed):
        await http.pool(raw.url()).request(request(), 5.0)
    refused = Target.parse("http://127.0.0.1:9/hook")  # discard port: nothing listens
    with pytest.raises(ConnectionFailed):
        await http.pool(refused).request(request(), 5.0)
    http.close()


async def test_timeout_drops_the_connection_and_the_next_request_opens_a_new_one(serve) -> None:
    calls = {"n": 0}

    async def slow_first(_r: bytes, writer: asyncio.StreamWriter) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(0.5)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    raw = await serve(slow_first)
    http = client()
    pool = http.pool(raw.url())
    with pytest.raises(TimeoutError):
        await pool.request(request(), 0.1)
    a = await pool.request(request(), 5.0)
    assert (a.status, a.body) == (200, b"ok")
    # The late answer to the first request can never be read as the second one's.
    assert raw.connections == 2
    http.close()


async def test_only_the_first_bytes_are_kept_and_compressed_answers_are_decoded(serve) -> None:
    big = b"x" * 10_000
    raw = await serve(reply(b"HTTP/1.1 500 Oops\r\ncontent-length: 10000\r\n\r\n" + big))
    http = client(keep=100)
    pool = http.pool(raw.url())
    for _ in range(2):
        a = await pool.request(request(), 5.0)
        assert (a.status, a.body) == (500, b"x" * 100)
    assert raw.connections == 1  # the rest was drained, the connection kept

    packed = gzip.compress(b'{"error":"quota"}')
    zipped = await serve(reply(
        b"HTTP/1.1 400 Bad Request\r\ncontent-encoding: gzip\r\ncontent-length: "
        + str(len(packed)).encode() + b"\r\n\r\n" + packed))
    a = await http.pool(zipped.url()).request(request(), 5.0)
    assert (a.status, a.body) == (400, b'{"error":"quota"}')
    http.close()


async def test_garbage_is_a_connection_failure(serve) -> None:
    raw = await serve(reply(b"SMTP ready\r\n\r\n"))
    http = client()
    with pytest.raises(ConnectionFailed):
        await http.pool(raw.url()).request(request(), 5.0)
    http.close()


async def test_the_adapter_sends_the_signed_envelope_and_maps_answers(serve) -> None:
    answers = iter([
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nretry-after: 3\r\ncontent-length: 4\r\n\r\nbusy",
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    ])

    async def answer(_r: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(next(answers))
        await writer.drain()

    raw = await serve(answer)
    secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
    config = DestinationConfig(
        name="crm",
        url=f"http://127.0.0.1:{raw.port}/in/crm?tenant=a%20b",
        secret=SecretStr(secret),
        token=SecretStr("tok-1"),
        timeout_s=5.0,
    )
    adapter = WebhookAdapter(config, SharedSession(10))
    job = Job(
        id=42, event_id=UUID(int=7), destination="crm", attempt=1, max_attempts=None,
        mapping_version=None, queue="default", type="client.updated", source="crm",
        payload={}, occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    first = await adapter.send(job, {"nome": "Zé"})
    assert (first.ok, first.http_status, first.error) == (True, 204, None)
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /in/crm?tenant=a%20b HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["host"] == f"127.0.0.1:{raw.port}"
    assert headers["authorization"] == "Bearer tok-1"
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "dlv_42"
    assert int(headers["content-length"]) == len(body)
    signing.verify(secret, headers["webhook-id"], headers["webhook-timestamp"],
                   headers["webhook-signature"], body)
    assert json.loads(body) == {
        "id": str(UUID(int=7)), "type": "client.updated", "source": "crm",
        "occurred_at": "2026-01-02T03:04:05+00:00", "data": {"nome": "Zé"}}

    busy = await adapter.send(job, {})
    assert (busy.ok, busy.permanent, busy.http_status, busy.retry_after_s, busy.response) == (
        False, False, 503, 3.0, "busy")
    gone = await adapter.send(job, {})
    assert (gone.ok, gone.permanent, gone.error) == (False, True, "HTTP 404")
    assert raw.connections == 1
    await adapter.aclose()


async def test_the_adapter_reports_timeouts_and_connection_errors() -> None:
    config = DestinationConfig(name="crm", url="http://127.0.0.1:9/x", timeout_s=1.0)
    adapter = WebhookAdapter(config, SharedSession(10))
    job = Job(
        id=1, event_id=UUID(int=1), destination="crm", attempt=1, max_attempts=None,
        mapping_version=None, queue="default", type="t", source="s", payload={},
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC), received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    result = await adapter.send(job, {})
    assert not result.ok and not result.permanent
    assert result.error is not None and result.error.startswith("connection error: ")
    with pytest.raises(ValueError):
        WebhookAdapter(
            DestinationConfig(name="crm", url="http://h/x", token=SecretStr("a\r\nx: y")),
            SharedSession(1),
        )
    await adapter.aclose()


def test_urls_become_origins_and_request_targets() -> None:
    t = Target.parse("https://Hooks.Example.com/a b/é?x=1&y=a b")
    assert (t.scheme, t.host, t.port, t.host_header) == ("https", "hooks.example.com", 443,
                                                         "hooks.example.com")
    assert t.path == "/a%20b/%C3%A9?x=1&y=a%20b"
    v6 = Target.parse("http://[::1]:8080")
    assert (v6.host, v6.port, v6.host_header, v6.path) == ("::1", 8080, "[::1]:8080", "/")
    assert Target.parse("http://u%40x:p%3Aw@h:80/p").userinfo == ("u@x", "p:w")
    for bad in ("ftp://h/x", "http:///x", "http://h:99999/x"):
        with pytest.raises(ValueError):
            Target.parse(bad)


async def test_credentials_in_the_url_go_as_basic_auth_not_into_the_summary(serve) -> None:
    raw = await serve(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
    adapter = WebhookAdapter(
        DestinationConfig(name="crm", url=f"http://bob:s3cret@127.0.0.1:{raw.port}/x"),
        SharedSession(1),
    )
    job = Job(
        id=5, event_id=UUID(int=5), destination="crm", attempt=1, max_attempts=None,
        mapping_version=None, queue="default", type="t", source="s", payload={},
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC), received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    result = await adapter.send(job, {})
    assert result.ok
    assert b"\r\nauthorization: Basic Ym9iOnMzY3JldA==\r\n" in raw.requests[0]
    assert result.request_summary is not None and "s3cret" not in result.request_summary
    assert result.request_summary.startswith(f"POST http://127.0.0.1:{raw.port}/x ")
    await adapter.aclose()
