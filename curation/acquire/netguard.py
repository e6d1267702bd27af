"""Safe HTTP fetching: refuse private/loopback/link-local/multicast targets before connecting, cap bodies.

Every connection the crawler or the downloader makes goes through `build_opener`. The target host is
resolved once, each address is checked against `AddressPolicy`, and the socket connects to the checked
address (no second DNS lookup that could rebind). Redirects go through the same check, hop by hop.
A request may also be given a total deadline (connect, headers and body, over all its redirect hops), and
the status line + headers of every response are capped in bytes and lines.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

USER_AGENT_TOKEN = "mithridate"
MAX_HEADER_BYTES = 65536  # default cap on a response's status line + headers
MAX_HEADERS = 100  # default cap on a response's header lines (http.client itself refuses more than 100)


class BlockedAddress(urllib.error.URLError):
    """Raised before connecting when a URL resolves to an address the policy forbids."""


class BodyTooLarge(urllib.error.URLError):
    """Raised while reading a response body that exceeds the cap."""


class DeadlineExceeded(urllib.error.URLError):
    """Raised when a request (connect, headers and body, over all redirect hops) outlasts its deadline."""


class HeadersTooLarge(urllib.error.URLError):
    """Raised while reading a status line + headers that exceed max_header_bytes or max_headers."""


def user_agent(contact_url: str) -> str:
    """The user agent string: names the project, its version and a contact URL."""
    return f"{USER_AGENT_TOKEN}/0.1 (+{contact_url})"


def parse_networks(values: tuple[str, ...], field: str = "allow_networks") -> tuple:
    """Parse CIDR strings, or raise a ValueError naming the field and the bad value."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValueError(f"{field}: {v!r} is not an IP network such as 127.0.0.0/8 or 10.1.2.3/32") from None
    return tuple(out)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses may be contacted: public ones, plus explicitly allowed networks."""

    allow: tuple = ()  # ipaddress networks allowed even though they are private/loopback/…

    def is_allowed(self, ip: str) -> bool:
        """True for public unicast addresses and for addresses inside an allowed network."""
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if any(addr in net for net in self.allow):
            return True
        return addr.is_global and not addr.is_multicast

    def resolve(self, host: str, port: int) -> str:
        """Resolve `host` and return its first address, raising BlockedAddress if any address is forbidden."""
        try:  # an address literal needs no lookup (and cannot be rebound)
            ips = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            ips = self._lookup(host, port)
        for ip in ips:
            if not self.is_allowed(ip):
                raise BlockedAddress(f"refused: {host} resolves to non-public address {ip} (not in allow_networks)")
        return ips[0]

    @staticmethod
    def _lookup(host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise urllib.error.URLError(f"cannot resolve {host}: {err}") from None
        return [info[4][0] for info in infos]


@dataclass(frozen=True)
class _Deadline:
    """When a request must be done (monotonic clock), and the total time it was given."""

    seconds: float
    at: float

    @classmethod
    def start(cls, seconds: float) -> "_Deadline":
        return cls(seconds, time.monotonic() + seconds)

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"timed out: request deadline of {self.seconds:g} s exceeded")

    def remaining(self) -> float:
        """Seconds left, or DeadlineExceeded when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def run(self, per_read: float | None, call):
        """`call(timeout)`, timeout = min(per_read, time left); a timeout set by the deadline is DeadlineExceeded."""
        left = self.remaining()
        by_deadline = per_read is None or left < per_read
        try:
            return call(left if by_deadline else per_read)
        except TimeoutError:
            if by_deadline:
                raise self.error() from None
            raise


def _seconds(timeout) -> float | None:
    """A connection's timeout in seconds (urlopen without timeout= passes socket's default sentinel)."""
    return socket.getdefaulttimeout() if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout  # noqa: SLF001


class _Bounded:
    """Socket mixin: every read and write waits at most min(per-read timeout, time left before the deadline)."""

    _deadline: _Deadline | None = None
    _per_read: float | None = None

    def _bounded(self, method, *args):
        if self._deadline is None:
            return method(*args)

        def call(timeout):
            self.settimeout(timeout)
            return method(*args)

        return self._deadline.run(self._per_read, call)

    def sendall(self, *args):
        return self._bounded(super().sendall, *args)


class _DeadlineSocket(_Bounded, socket.socket):
    """A plain TCP socket bounded by a request deadline."""

    @classmethod
    def adopt(cls, sock: socket.socket, deadline, per_read) -> "_DeadlineSocket":
        new = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        new.settimeout(per_read)
        new._deadline, new._per_read = deadline, per_read
        return new

    def recv_into(self, *args):
        return self._bounded(super().recv_into, *args)

    def recv(self, *args):
        return self._bounded(super().recv, *args)


class _DeadlineSSLSocket(_Bounded, ssl.SSLSocket):
    """A TLS socket bounded by a request deadline (recv and recv_into read through `read`)."""

    def read(self, *args):
        return self._bounded(super().read, *args)

    def do_handshake(self, *args):
        return self._bounded(super().do_handshake, *args)


def _tls_context() -> ssl.SSLContext:
    """The default verifying TLS context (as http.client makes it), with deadline-bounded sockets."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    context.sslsocket_class = _DeadlineSSLSocket
    return context


def _connect(policy: AddressPolicy, conn, deadline: _Deadline | None) -> socket.socket:
    """Connect to the policy-checked address of `conn.host`, within the deadline when there is one."""
    ip = policy.resolve(conn.host, conn.port)

    def call(timeout):
        return socket.create_connection((ip, conn.port), timeout, conn.source_address)

    return call(conn.timeout) if deadline is None else deadline.run(_seconds(conn.timeout), call)


def _wrap_tls(context, sock, host: str, deadline, per_read):
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    tls._deadline, tls._per_read = deadline, per_read
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


class _HeaderCounter:
    """Stands in for a response's file while its status line and headers are read; enforces the caps."""

    def __init__(self, fp, max_bytes: int, max_lines: int):
        self.fp, self.max_bytes, self.max_lines = fp, max_bytes, max_lines
        self.bytes = self.lines = 0
        self.in_headers = False  # False: the next line is a status line

    def readline(self, limit=-1):
        line = self.fp.readline(limit)
        self.bytes += len(line)
        if self.bytes > self.max_bytes:
            raise HeadersTooLarge(f"response headers exceed max_header_bytes={self.max_bytes}")
        if line in (b"\r\n", b"\n", b""):
            self.in_headers = False
        elif not self.in_headers:
            self.in_headers = True
        else:
            self.lines += 1
            if self.lines > self.max_lines:
                raise HeadersTooLarge(f"response has more than max_headers={self.max_lines} header lines")
        return line

    def __getattr__(self, name):
        return getattr(self.fp, name)


def _response_class(max_header_bytes: int, max_headers: int):
    class CappedResponse(http.client.HTTPResponse):
        def begin(self):
            fp = self.fp
            self.fp = _HeaderCounter(fp, max_header_bytes, max_headers)
            try:  # on any error, getresponse() closes the response (and so the socket's file)
                super().begin()
            except http.client.LineTooLong as err:
                raise HeadersTooLarge(f"response {err}") from None  # one line over http.client's 65536 bytes
            finally:
                if self.fp is not None:
                    self.fp = fp

    return CappedResponse


def _connection_classes(policy: AddressPolicy, response_class, tls: ssl.SSLContext):
    class GuardedHTTPConnection(http.client.HTTPConnection):
        def __init__(self, *args, deadline=None, **kw):
            super().__init__(*args, **kw)
            self.deadline, self.response_class = deadline, response_class

        def connect(self):
            sock = _connect(policy, self, self.deadline)
            self.sock = _DeadlineSocket.adopt(sock, self.deadline, _seconds(self.timeout))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    class GuardedHTTPSConnection(http.client.HTTPSConnection):
        def __init__(self, *args, deadline=None, **kw):
            super().__init__(*args, context=tls, **kw)
            self.deadline, self.response_class = deadline, response_class

        def connect(self):
            sock = _connect(policy, self, self.deadline)
            self.sock = _wrap_tls(self._context, sock, self.host, self.deadline, _seconds(self.timeout))

    return GuardedHTTPConnection, GuardedHTTPSConnection


def _capped_read(response, max_bytes: int, deadline: _Deadline | None = None):
    raw_read = response.read
    total = 0  # bytes read so far: the cap holds over a sequence of read(amt) calls too

    def read(amt=None):
        nonlocal total
        left = max_bytes + 1 - total
        if deadline is not None:
            deadline.remaining()
        data = raw_read(left if amt is None else min(amt, left))
        if deadline is not None:  # a body that ends past the deadline is not returned, whole or not
            deadline.remaining()
        total += len(data)
        if total > max_bytes:
            raise BodyTooLarge(f"body exceeds max_bytes={max_bytes}")
        return data

    return read


def _unwrapped(do_open, conn_class, req):
    """`do_open` wraps every OSError raised while connecting in a URLError: re-raise our own errors as they are."""
    try:
        return do_open(conn_class, req)
    except urllib.error.URLError as err:
        if isinstance(err.reason, urllib.error.URLError):  # BlockedAddress, DeadlineExceeded, "cannot resolve"
            raise err.reason from None
        raise


class _GuardHandler(urllib.request.BaseHandler):
    """Opens connections through the policy, sets the user agent and deadline, caps bodies, checks image types."""

    handler_order = 400

    def __init__(self, policy, agent, max_bytes, require_image, on_response, deadline_s, header_caps):
        self.conn_http, self.conn_https = _connection_classes(policy, _response_class(*header_caps), _tls_context())
        self.agent, self.max_bytes, self.require_image = agent, max_bytes, require_image
        self.on_response, self.deadline_s = on_response, deadline_s

    def http_open(self, req):
        conn = functools.partial(self.conn_http, deadline=getattr(req, "deadline", None))
        return _unwrapped(urllib.request.HTTPHandler().do_open, conn, req)

    def https_open(self, req):
        conn = functools.partial(self.conn_https, deadline=getattr(req, "deadline", None))
        return _unwrapped(urllib.request.HTTPSHandler().do_open, conn, req)

    def http_request(self, req):
        req.remove_header("User-agent")
        req.add_unredirected_header("User-agent", self.agent)
        redirected = getattr(req, "redirect_hops", 0) and getattr(req, "deadline", None) is not None
        if self.deadline_s is not None and not redirected:  # a redirect keeps the first request's deadline
            req.deadline = _Deadline.start(self.deadline_s)
        return req

    def http_response(self, req, response):
        if not 200 <= response.status < 300:  # redirects and errors go on to their handlers
            return response
        if self.on_response is not None:
            self.on_response(req.full_url, response.headers.get_all("X-Robots-Tag") or [])
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise BodyTooLarge(f"body of {length} bytes exceeds max_bytes={self.max_bytes}")
        ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if self.require_image and ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
            raise urllib.error.URLError(f"wrong content-type {ctype!r} for an image")
        response.read = _capped_read(response, self.max_bytes, getattr(req, "deadline", None))
        return response

    https_request = http_request
    https_response = http_response


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Counts redirect hops: urllib counts distinct URLs (a two-URL loop runs 8 hops) and always follows one."""

    def __init__(self, max_redirects: int):
        self.max_redirections = max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        hops = getattr(req, "redirect_hops", 0)
        if hops >= self.max_redirections:
            raise urllib.error.HTTPError(req.full_url, code, f"too many redirects (max_redirects="
                                         f"{self.max_redirections}), last one to {newurl}", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirect_hops = hops + 1
            new.deadline = getattr(req, "deadline", None)  # the deadline bounds all hops together
        return new


def _check_limits(deadline_s, max_header_bytes: int, max_headers: int) -> None:
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s={deadline_s!r}: must be a positive number of seconds, or None for no deadline")
    if max_header_bytes < 1:
        raise ValueError(f"max_header_bytes={max_header_bytes!r}: must be at least 1")
    most = http.client._MAXHEADERS  # noqa: SLF001 - beyond it http.client refuses first, with its own error
    if not 1 <= max_headers <= most:
        raise ValueError(f"max_headers={max_headers!r}: must be between 1 and {most}")


def build_opener(
    policy: AddressPolicy,
    agent: str,
    max_bytes: int,
    max_redirects: int = 5,
    require_image: bool = False,
    on_response=None,
    deadline_s: float | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_headers: int = MAX_HEADERS,
) -> urllib.request.OpenerDirector:
    """A urllib opener that enforces the address policy on every hop, the redirect limit and the body cap.

    `on_response(url, x_robots_tag_values)`, when given, is called for every 2xx response (audits).
    `deadline_s`, when given, bounds each request in total (connect, headers, body, all redirect hops).
    """
    _check_limits(deadline_s, max_header_bytes, max_headers)
    redirect = _RedirectHandler(max_redirects)
    opener = urllib.request.OpenerDirector()
    for handler in (
        _GuardHandler(policy, agent, max_bytes, require_image, on_response, deadline_s,
                      (max_header_bytes, max_headers)),
        redirect,
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


@contextlib.contextmanager
def installed(opener: urllib.request.OpenerDirector):
    """Make `opener` the process-wide default of `urllib.request.urlopen` (img2dataset uses it) for a block."""
    previous = urllib.request._opener  # noqa: SLF001 - urllib keeps the installed opener here
    urllib.request.install_opener(opener)
    try:
        yield opener
    finally:
        urllib.request._opener = previous  # noqa: SLF001
