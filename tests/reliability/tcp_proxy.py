"""A TCP forwarder that can cut or freeze the connection to a real server (PostgreSQL in the
reliability suite), so a test can make the database unavailable without stopping the server
that other people share."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from contextlib import suppress

from sqlalchemy import make_url


class TcpProxy:
    """A TCP forwarder on ``127.0.0.1:<port>`` to ``host:port``, one thread, that can be cut.

    :meth:`cut` closes the listening socket and resets every open connection: clients see the
    server gone (connection refused, connection reset), as when PostgreSQL is down or its port
    rejected. :meth:`freeze` forwards nothing more (open connections and new ones hang, their
    bytes waiting in the kernel's buffers), as when the port is dropped by a firewall or the
    network partitioned. :meth:`restore` ends either.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._frozen = threading.Event()
        self.cuts = 0

    def start(self) -> TcpProxy:
        self._listen()
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def url(self, database_url: str) -> str:
        """``database_url`` routed through this proxy."""
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self.cuts += 1
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._pairs):
                self._drop(sock)

    def freeze(self) -> None:
        """Forward nothing until :meth:`restore` (connections stay open and hang)."""
        self._frozen.set()

    def restore(self) -> None:
        if self._frozen.is_set():
            self._frozen.clear()
        else:
            self._listen()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _drop(self, sock: socket.socket) -> None:
        for s in (sock, self._pairs.pop(sock, None)):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with suppress(KeyError, ValueError):
                self._selector.unregister(s)
            try:  # RST, not FIN: the peer sees the connection reset
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.close()
            except OSError:
                pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._frozen.is_set():
                time.sleep(0.1)
                continue
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self._listener:
                        self._accept(sock)
                    elif sock in self._pairs:
                        self._forward(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            self._selector.register(s, selectors.EVENT_READ)
        self._pairs[client], self._pairs[upstream] = upstream, client

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._pairs[sock].setblocking(True)
                self._pairs[sock].sendall(data)
                self._pairs[sock].setblocking(False)
                return
        except OSError:
            pass
        self._drop(sock)
