"""A loopback TCP proxy the test controls, to break the network between our processes and a
server (Postgres, a destination) without touching the server itself.

- `down()`: every open connection is reset and the listening socket is closed, so new
  connections are refused (what clients see while Postgres restarts or a host is down);
- `up()`: listen again on the same port;
- `stall()` / `resume()`: connections stay open but no byte is forwarded (a frozen server or a
  black-holed network); `resume()` lets the held bytes through;
- `reset_next(n, after_reply=...)`: the next n exchanges (a client message and the server's
  answer: one HTTP request on a kept-alive connection) are cut with a reset, either as soon as
  the client has sent (the server never sees the request) or when the server's answer comes
  (the server did the work, the client sees a reset: at-least-once must send it again).

One asyncio loop in a daemon thread; every public method is called from the test's thread.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer learns at once that the connection is gone."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    # The client has spoken and the server has not answered yet: an exchange is in progress.
    busy: bool = False
    cut_on_reply: bool = False

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.server)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self.dropped = 0
        self.resets = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._flowing = asyncio.Event()
        self._resets_left = 0
        self._reset_after_reply = False

    # --- control (test thread) ---------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._set_flowing(True))
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._down())
            self._call(self._cancel_tasks())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def down(self) -> int:
        """Reset every connection and refuse new ones; returns how many were dropped."""
        return self._call(self._down())

    def up(self) -> None:
        self._call(self._listen())

    def reset_next(self, n: int, *, after_reply: bool = False) -> None:
        self._call(self._set_resets(n, after_reply))

    def stall(self) -> None:
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        self._call(self._set_flowing(True))

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # --- inside the loop ------------------------------------------------------------------------

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_resets(self, n: int, after_reply: bool) -> None:
        self._resets_left = n
        self._reset_after_reply = after_reply

    async def _set_flowing(self, on: bool) -> None:
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock, backlog=128)

    async def _down(self) -> int:
        if self._server is not None:
            self._server.close()
            self._server = None
        conns, self._conns = list(self._conns), set()
        for conn in conns:
            conn.reset()
        self.dropped += len(conns)
        return len(conns)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            _reset(client_w)
            return
        conn = _Conn(client_w, server_w)
        if self._server is None:  # went down while we were connecting
            conn.reset()
            return
        self._conns.add(conn)
        pumps = [
            asyncio.create_task(self._requests(conn, client_r)),
            asyncio.create_task(self._replies(conn, server_r)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            if conn in self._conns:
                self._conns.discard(conn)
                client_w.close()
                server_w.close()

    def _take_reset(self) -> bool:
        if self._resets_left <= 0:
            return False
        self._resets_left -= 1
        self.resets += 1
        return True

    async def _requests(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """client → server. The first bytes after an answer start a new exchange: that is
        where a scheduled reset is decided."""
        try:
            while data := await reader.read(CHUNK_BYTES):
                if not conn.busy:
                    conn.busy = True
                    if self._take_reset():
                        if not self._reset_after_reply:
                            self._conns.discard(conn)
                            conn.reset()
                            return
                        conn.cut_on_reply = True
                await self._flowing.wait()
                conn.server.write(data)
                await conn.server.drain()
        except OSError:
            return

    async def _replies(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """server → client."""
        try:
            while data := await reader.read(CHUNK_BYTES):
                if conn.cut_on_reply:
                    self._conns.discard(conn)
                    conn.reset()
                    return
                conn.busy = False
                await self._flowing.wait()
                conn.client.write(data)
                await conn.client.drain()
        except OSError:
            return


def wait_port_refused(port: int, timeout_s: float = 5.0) -> bool:
    """True once a connect to the port is refused (the proxy is really down)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
