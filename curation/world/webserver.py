"""Serve in-memory routes on loopback addresses: one threaded HTTP server per site.

A route is a fixed response (status, headers, body) with an optional delay, optionally dripped one byte at a
time (slow-loris servers); redirects are routes with a `Location` header. Nothing here knows about art or alt
text — see `web.py` for what is served.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One fixed HTTP response."""

    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # sleep before answering (slow responses)
    drip_s: float = 0.0  # > 0: send the body one byte every drip_s seconds
    drip_headers: bool = False  # with drip_s: drip the status line and headers too


def _handler_class(routes: dict[str, Route]):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mithridate-demo-web"
        drip_headers_s = 0.0  # > 0 while answering a route that drips its headers

        def log_message(self, fmt, *args):  # quiet: the crawler logs what matters
            logger.debug("%s " + fmt, self.address_string(), *args)

        def _drip(self, data: bytes, drip_s: float):
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                time.sleep(drip_s)

        def flush_headers(self):
            if self.drip_headers_s:
                self._headers_buffer, data = [], b"".join(getattr(self, "_headers_buffer", []))
                self._drip(data, self.drip_headers_s)
            else:
                super().flush_headers()

        def _answer(self, send_body: bool):
            route = routes.get(self.path.split("#", 1)[0]) or Route(b"not found", "text/plain", 404)
            self.drip_headers_s = route.drip_s if route.drip_headers else 0.0
            if route.delay_s:
                time.sleep(route.delay_s)
            try:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                for k, v in route.headers:
                    self.send_header(k, v)
                self.end_headers()
                if send_body and route.drip_s:
                    self._drip(route.body, route.drip_s)
                elif send_body:
                    self.wfile.write(route.body)
            except ConnectionError:  # client gave up (timeouts, deadlines, body caps)
                self.close_connection = True
            finally:
                self.drip_headers_s = 0.0

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._answer(True)

        def do_HEAD(self):  # noqa: N802
            self._answer(False)

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # the default of 5 drops connections under a concurrent crawl
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hangs up mid-answer (deadlines, body caps) is routine here: log it, do not print it."""
        logger.debug("request from %s ended with an error", client_address, exc_info=True)


class SiteServer:
    """A threaded HTTP server for one site, bound to a loopback address."""

    def __init__(self, host: str, port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"web host {host!r}: the demo web serves on loopback addresses (127.0.0.0/8) only")
        self.routes: dict[str, Route] = {}
        self.httpd = _Server((host, port), _handler_class(self.routes))
        self.host, self.port = self.httpd.server_address[:2]
        self.thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        """`http://host:port` of this site."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name=f"site-{self.port}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
