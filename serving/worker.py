"""A gunicorn gthread worker that reads each request whole in its event loop before a thread serves it.

Stock gthread hands a connection to a thread at its first byte, and the thread
then blocks reading the rest: clients that trickle headers or never finish a body
hold every thread (slowloris) and nobody else is served. Here a request's bytes
are collected by the worker's poller (non-blocking, h11 judging where the request
ends) and only a complete request, one over the body limit or one h11 cannot
frame reaches a thread; gunicorn's own parser then reads it from the buffer and
answers as usual. A request not whole within TASKROUTER_READ_TIMEOUT_S of its
first byte gets 408 and its connection is closed. The thread also learns when the
request arrived, so admission's deadline counts from there (`arrived_at`).
"""
from __future__ import annotations

import selectors
import threading
import time
from collections import deque
from functools import partial

import h11
from gunicorn.workers.gthread import ThreadWorker, TConn

from taskrouter import settings

_ARRIVAL = threading.local()
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def arrived_at() -> float | None:
    """`time.monotonic()` at the first byte of the request this thread serves (None outside this worker)."""
    return getattr(_ARRIVAL, "value", None)


class _Arriving:
    """A request still arriving on `conn`: its bytes so far and h11's view of where it ends."""

    def __init__(self, conn: TConn, timeout_s: float, max_body: int):
        self.conn, self.max_body = conn, max_body
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.data = bytearray()
        self.body_bytes = 0
        self.framing = h11.Connection(h11.SERVER)

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once a thread should take over (whole, too big, or unframeable)."""
        self.data += data
        try:
            self.framing.receive_data(data)
            while (event := self.framing.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Data):
                    self.body_bytes += len(event.data)
                    if self.body_bytes > self.max_body:
                        return True
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    return True
                elif isinstance(event, h11.Request) and self.framing.they_are_waiting_for_100_continue:
                    self.conn.sock.send(_CONTINUE)  # a 25-byte send on a fresh socket does not block
        except (h11.RemoteProtocolError, OSError):
            return True  # gunicorn's parser answers the malformed request (400) or sees the closed socket
        return False


class BufferingWorker(ThreadWorker):
    """gthread with whole-request buffering in the event loop (see the module docstring)."""

    def init_process(self) -> None:
        config = settings.get()
        self.read_timeout_s, self.max_body = config.read_timeout_s, config.max_body_bytes
        self.arriving: deque[_Arriving] = deque()  # ordered by deadline: one timeout for all
        super().init_process()

    def accept(self, listener) -> None:
        try:
            sock, client = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):  # another worker took it, or the client gave up
            return
        self.nr_conns += 1
        self._collect(TConn(self.cfg, sock, client, listener.getsockname()))

    def on_client_socket_readable(self, conn: TConn, client) -> None:
        """The next request on a kept-alive connection is collected the same way."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._collect(conn)

    def _collect(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        arriving = _Arriving(conn, self.read_timeout_s, self.max_body)
        self.arriving.append(arriving)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, arriving))

    def _on_bytes(self, arriving: _Arriving, sock) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and not arriving.feed(data):
            return
        self.poller.unregister(sock)
        self.arriving.remove(arriving)
        if not data:  # the client went away before its request was whole
            self.nr_conns -= 1
            arriving.conn.close()
            return
        conn = arriving.conn
        conn.data_ready, conn.buffered, conn.arrived = True, bytes(arriving.data), arriving.arrived
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.arriving and self.arriving[0].deadline <= now:
            arriving = self.arriving.popleft()
            self.poller.unregister(arriving.conn.sock)
            try:
                arriving.conn.sock.send(_TIMEOUT_RESPONSE)
            except OSError:
                pass
            self.nr_conns -= 1
            arriving.conn.close()

    def handle(self, conn: TConn):
        """In a thread: give gunicorn's parser the buffered request, note its arrival, serve it."""
        buffered = getattr(conn, "buffered", None)
        if buffered is not None:
            conn.buffered = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(buffered)
        _ARRIVAL.value = getattr(conn, "arrived", None)
        try:
            return super().handle(conn)
        finally:
            _ARRIVAL.value = None
