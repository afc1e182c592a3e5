"""A loopback endpoint that accepts every connection and never answers (nor closes): what a
hung server looks like to a client. Used by the network-timeout tests (Hub push, NDIF)."""
from __future__ import annotations

import socket
import threading


class Silent:
    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def request_lines(self) -> list[str]:
        """The first line of what each connection sent (read now, never answered)."""
        lines = []
        for conn in self.accepted:
            conn.settimeout(5)
            lines.append(conn.recv(4096).split(b"\r\n", 1)[0].decode())
        return lines

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()
