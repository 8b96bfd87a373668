"""A fault-injecting HTTP reverse proxy for tests, on 127.0.0.1.

``FaultProxy(upstream_port)`` listens on a free loopback port and forwards each HTTP/1.1
request to the upstream server (one fresh upstream connection per request, the client's
bytes and headers unchanged — SigV4 signatures stay valid because Host is kept). Per
request, a seeded RNG decides whether to inject a fault instead:

* ``error``: answer 500 InternalError or 503 SlowDown (with ``Retry-After``) without
  forwarding (the request body is read first, as a real server would);
* ``drop_request``: read part of the request body, then drop the connection (a PUT cut
  mid-body; nothing reaches the server);
* ``drop_response``: forward the request, then send only part of the response (a GET cut
  mid-body) or nothing at all (an *ambiguous* request: done upstream, answer lost);
* ``latency``: sleep before forwarding.

Faults are bounded: at most ``max_faults`` are injected, after which requests pass
through; ``methods`` and ``match(method, target)`` restrict which requests may be faulted; the proxy shuts itself down
after ``lifetime`` seconds. ``intercept`` can answer chosen requests itself. ``stats``
counts requests and injected faults.
"""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


class _Closed(Exception):
    """The peer closed the connection."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} {self.reason}"]
        names = {k.lower() for k, _ in self.headers}
        head += [f"{k}: {v}" for k, v in self.headers]
        if "content-length" not in names:
            head.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def s3_error(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>faultproxy</RequestId></Error>"
    ).encode()
    headers = [("Content-Type", "application/xml")]
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    reason = {404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}.get(
        status, "Error"
    )
    return Response(status, reason, headers, body)


class _Reader:
    """_Reader buffers a socket for line- and length-based HTTP parsing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise _Closed()
        self.buf += data

    def head(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                out = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return out
            if len(self.buf) > 1 << 20:
                raise _Closed()
            self._fill()

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return out
            self._fill()

    def chunked(self) -> bytes:
        """chunked returns a chunked body's raw bytes (framing included)."""
        out = bytearray()
        while True:
            line = self.line()
            out += line
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers until the empty line
                    t = self.line()
                    out += t
                    if t == b"\r\n":
                        return bytes(out)
            out += self.exactly(size + 2)

    def rest(self) -> bytes:
        out = bytearray(self.buf)
        self.buf.clear()
        while True:
            data = self.sock.recv(256 * 1024)
            if not data:
                return bytes(out)
            out += data


def _parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


class FaultProxy:
    """FaultProxy forwards HTTP to ``127.0.0.1:upstream_port`` and injects faults."""

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 0,
        error_rate: float = 0.0,
        slowdown_share: float = 0.5,
        retry_after: float = 0.0,
        drop_request_rate: float = 0.0,
        drop_response_rate: float = 0.0,
        latency: tuple[float, float] = (0.0, 0.0),
        max_faults: int = 1000,
        methods: tuple[str, ...] | None = None,
        match: Callable[[str, str], bool] | None = None,
        min_drop_body: int = 0,
        intercept: Callable[[Request], Response | None] | None = None,
        lifetime: float = 120.0,
    ) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rng = random.Random(seed)
        self.error_rate = error_rate
        self.slowdown_share = slowdown_share
        self.retry_after = retry_after
        self.drop_request_rate = drop_request_rate
        self.drop_response_rate = drop_response_rate
        self.latency = latency
        self.max_faults = max_faults
        self.methods = methods
        self.match = match
        self.min_drop_body = min_drop_body
        self.intercept = intercept
        self.lifetime = lifetime
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._timer: threading.Timer | None = None
        self._conns: set[socket.socket] = set()

    # --------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if self._timer is not None:
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for sock in conns:  # idle keep-alive connections would otherwise linger
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, **kwargs: object) -> None:
        """configure changes fault settings while running (e.g. ``error_rate=0``)."""
        with self._lock:
            for k, v in kwargs.items():
                if not hasattr(self, k):
                    raise AttributeError(k)
                setattr(self, k, v)

    # --------------------------------------------------------------- decisions

    def _decide(self, method: str, target: str) -> tuple[str | None, float, float]:
        """_decide picks (fault or None, latency, fraction) for one request, under the lock."""
        with self._lock:
            self.stats["requests"] += 1
            lo, hi = self.latency
            delay = self.rng.uniform(lo, hi) if hi > 0 else 0.0
            r = self.rng.random()
            frac = self.rng.random()
            fault = None
            if (
                self.stats["faults"] < self.max_faults
                and (self.methods is None or method in self.methods)
                and (self.match is None or self.match(method, target))
            ):
                if r < self.error_rate:
                    fault = "slowdown" if frac < self.slowdown_share else "error"
                elif r < self.error_rate + self.drop_request_rate:
                    fault = "drop_request"
                elif r < self.error_rate + self.drop_request_rate + self.drop_response_rate:
                    fault = "drop_response"
            return fault, delay, frac

    def _count(self, fault: str) -> None:
        with self._lock:
            self.stats["faults"] += 1
            self.stats[fault] += 1

    # --------------------------------------------------------------- serving

    def _serve(self, sock: socket.socket) -> None:
        reader = _Reader(sock)
        with self._lock:
            self._conns.add(sock)
        try:
            while self._server is not None:
                if not self._one(sock, reader):
                    return
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _one(self, sock: socket.socket, reader: _Reader) -> bool:
        """_one handles one request; False means close the client connection."""
        raw_head = reader.head()
        request_line, headers = _parse_head(raw_head)
        method, target, version = (request_line.split(" ", 2) + ["", ""])[:3]
        fault, delay, frac = self._decide(method, target)

        length = int(_get(headers, "content-length") or 0)
        chunked = "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        expect = (_get(headers, "expect") or "").lower() == "100-continue"
        headers = [(k, v) for k, v in headers if k.lower() not in ("expect", "connection")]
        if expect:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        if fault == "drop_request" and (length >= self.min_drop_body or chunked):
            self._count(fault)
            if length:
                reader.exactly(int(length * frac))
            return False
        body = reader.chunked() if chunked else reader.exactly(length)
        req = Request(method, target, version, headers, body)

        if self.intercept is not None:
            resp = self.intercept(req)
            if resp is not None:
                with self._lock:
                    self.stats["intercepted"] += 1
                sock.sendall(resp.encode())
                return True
        if fault in ("error", "slowdown"):
            self._count(fault)
            if fault == "slowdown":
                resp = s3_error(
                    503, "SlowDown", "Please reduce your request rate.", self.retry_after
                )
            else:
                resp = s3_error(500, "InternalError", "We encountered an internal error.")
            sock.sendall(resp.encode())
            return True
        if delay:
            time.sleep(delay)

        status_line, resp_headers, resp_body, keep = self._forward(req)
        if fault == "drop_response" and len(resp_body) >= self.min_drop_body:
            self._count(fault)
            head = self._head(status_line, resp_headers)
            if resp_body:
                sock.sendall(head + resp_body[: int(len(resp_body) * frac)])
            return False
        sock.sendall(self._head(status_line, resp_headers) + resp_body)
        return keep

    @staticmethod
    def _head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
        lines = [status_line] + [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _forward(self, req: Request) -> tuple[str, list[tuple[str, str]], bytes, bool]:
        """_forward sends one request upstream and returns its whole (raw-framed) answer."""
        up = socket.create_connection(self.upstream, timeout=60)
        try:
            head = [f"{req.method} {req.target} {req.version}"]
            head += [f"{k}: {v}" for k, v in req.headers]
            head.append("Connection: close")
            up.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body)
            r = _Reader(up)
            while True:
                status_line, headers = _parse_head(r.head())
                code = int(status_line.split(" ", 2)[1])
                if code >= 200:
                    break  # skip interim 1xx answers
            headers = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive")]
            te = (_get(headers, "transfer-encoding") or "").lower()
            cl = _get(headers, "content-length")
            keep = True
            if req.method == "HEAD" or code in (204, 304):
                body = b""
            elif "chunked" in te:
                body = r.chunked()
            elif cl is not None:
                body = r.exactly(int(cl))
            else:
                body = r.rest()  # framed by close: the client connection must close too
                keep = False
            return status_line, headers, body, keep
        finally:
            up.close()
