"""Safe HTTP fetching: refuse private/loopback/link-local/multicast targets before connecting, cap bodies.

Every connection the crawler or the downloader makes goes through `build_opener`. The target host is
resolved once, each address is checked against `AddressPolicy`, and the socket connects to the checked
address (no second DNS lookup that could rebind). Redirects go through the same check, hop by hop.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

USER_AGENT_TOKEN = "mithridate"


class BlockedAddress(urllib.error.URLError):
    """Raised before connecting when a URL resolves to an address the policy forbids."""


class BodyTooLarge(urllib.error.URLError):
    """Raised while reading a response body that exceeds the cap."""


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


def _connection_classes(policy: AddressPolicy):
    class GuardedHTTPConnection(http.client.HTTPConnection):
        def connect(self):
            ip = policy.resolve(self.host, self.port)
            self.sock = socket.create_connection((ip, self.port), self.timeout, self.source_address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    class GuardedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self):
            ip = policy.resolve(self.host, self.port)
            sock = socket.create_connection((ip, self.port), self.timeout, self.source_address)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    return GuardedHTTPConnection, GuardedHTTPSConnection


def _capped_read(response, max_bytes: int):
    raw_read = response.read
    total = 0  # bytes read so far: the cap holds over a sequence of read(amt) calls too

    def read(amt=None):
        nonlocal total
        left = max_bytes + 1 - total
        data = raw_read(left if amt is None else min(amt, left))
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
        if isinstance(err.reason, urllib.error.URLError):  # BlockedAddress, or "cannot resolve"
            raise err.reason from None
        raise


class _GuardHandler(urllib.request.BaseHandler):
    """Opens connections through the policy, sets the user agent, caps bodies, checks image content types."""

    handler_order = 400

    def __init__(self, policy, agent, max_bytes, require_image, on_response):
        self.conn_http, self.conn_https = _connection_classes(policy)
        self.agent, self.max_bytes, self.require_image = agent, max_bytes, require_image
        self.on_response = on_response

    def http_open(self, req):
        return _unwrapped(urllib.request.HTTPHandler().do_open, self.conn_http, req)

    def https_open(self, req):
        return _unwrapped(urllib.request.HTTPSHandler().do_open, self.conn_https, req)

    def http_request(self, req):
        req.remove_header("User-agent")
        req.add_unredirected_header("User-agent", self.agent)
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
        response.read = _capped_read(response, self.max_bytes)
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
        return new


def build_opener(
    policy: AddressPolicy,
    agent: str,
    max_bytes: int,
    max_redirects: int = 5,
    require_image: bool = False,
    on_response=None,
) -> urllib.request.OpenerDirector:
    """A urllib opener that enforces the address policy on every hop, the redirect limit and the body cap.

    `on_response(url, x_robots_tag_values)`, when given, is called for every 2xx response (audits).
    """
    redirect = _RedirectHandler(max_redirects)
    opener = urllib.request.OpenerDirector()
    for handler in (
        _GuardHandler(policy, agent, max_bytes, require_image, on_response),
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
