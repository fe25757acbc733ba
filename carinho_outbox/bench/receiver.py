"""A no-op destination: a raw asyncio HTTP/1.1 responder that answers 200 at once.

Fast on purpose (no framework, keep-alive, uvloop when installed), so the benchmark measures the
sender, not the receiver; its own ceiling is measured with wrk in the same run. It counts every
request and, when recording is switched on, keeps (webhook-id, arrival time) for latency.

Run as its own process: `python -m carinho_outbox.bench.receiver [--port 0]`; the first line it
prints is `PORT <n>`. Control endpoints on the same port:
  GET /_stats            -> {"count": n}
  POST /_record          -> start recording (clears earlier records)
  GET /_records          -> [[webhook_id, unix_time], ...] and stops recording
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

RESPONSE_OK = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n"
    b"connection: keep-alive\r\n\r\n{}"
)
MAX_HEAD_BYTES = 64 * 1024


def _reply(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class State:
    def __init__(self) -> None:
        self.count = 0
        self.recording = False
        self.records: list[tuple[str, float]] = []


class NoopProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buf = bytearray()
        self.need_body = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        while True:
            if self.need_body:
                take = min(self.need_body, len(buf))
                del buf[:take]
                self.need_body -= take
                if self.need_body:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES and self.transport is not None:
                    self.transport.close()
                break
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else None].strip() or b"0")
            self.need_body = length
            if head.startswith(b"get /_") or head.startswith(b"post /_"):
                out.append(self._control(head))
                continue
            state = self.state
            state.count += 1
            if state.recording:
                k = head.find(b"\r\nwebhook-id:")
                if k >= 0:
                    e = head.find(b"\r\n", k + 2)
                    wid = head[k + 13 : e if e >= 0 else None].strip().decode("latin-1")
                    state.records.append((wid, time.time()))
            out.append(RESPONSE_OK)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _control(self, head: bytes) -> bytes:
        state = self.state
        if head.startswith(b"get /_stats"):
            return _reply(json.dumps({"count": state.count}).encode())
        if head.startswith(b"post /_record"):
            state.records = []
            state.recording = True
            return _reply(b"{}")
        if head.startswith(b"get /_records"):
            state.recording = False
            records, state.records = state.records, []
            return _reply(json.dumps(records).encode())
        return _reply(b"{}")


async def serve(port: int, ready: socket.socket | None = None) -> None:
    loop = asyncio.get_running_loop()
    state = State()
    sock = ready or socket.create_server(("127.0.0.1", port), backlog=1024)
    server = await loop.create_server(lambda: NoopProtocol(state), sock=sock)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def orphaned() -> None:
        # The benchmark that started us may die without stopping us: do not outlive it.
        while os.getppid() == parent:  # noqa: ASYNC110 - polling a pid, no event exists
            await asyncio.sleep(1.0)
        stop.set()

    watch = asyncio.create_task(orphaned())
    async with server:
        await stop.wait()
    watch.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="carinho-bench-receiver", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
