"""curation.acquire.netguard against real HTTP(S) servers on 127.0.0.1: address policy, redirects, body cap, user agent,
request deadlines, header caps."""

import http.server
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from curation.acquire import crawler, funnel
from curation.acquire.netguard import (
    AddressPolicy,
    BlockedAddress,
    BodyTooLarge,
    DeadlineExceeded,
    HeadersTooLarge,
    build_opener,
    installed,
    parse_networks,
    user_agent,
)
from curation.world.webserver import Route, SiteServer

CONTACT = "https://contact.example/mithridate"
AGENT = user_agent(CONTACT)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(92))  # 100 bytes
CAP = 1000
BIG = 5 * CAP
LOOPBACK = AddressPolicy(parse_networks(("127.0.0.1/32",)))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", ctype=None, headers=()):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self._send(302, headers=(("Location", location),))

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, self.headers.get("User-Agent")))
        path = self.path
        if path == "/img.png":
            self._send(200, PNG, "image/png", (("X-Robots-Tag", "otherbot: noai"), ("X-Robots-Tag", "noimageai")))
        elif path == "/blob":
            self._send(200, PNG, "application/octet-stream")
        elif path == "/page.html":
            self._send(200, b"<html><body>hello</body></html>", "text/html; charset=utf-8")
        elif path == "/exact":
            self._send(200, b"x" * CAP, "image/png")
        elif path == "/big":
            self._send(200, b"x" * BIG, "image/png")
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(BIG // 500):
                self.wfile.write(b"1f4\r\n" + b"x" * 500 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/big-nolength":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * BIG)
            self.close_connection = True
        elif path == "/to-private":
            self._redirect("http://10.0.0.1/")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data")
        elif path == "/to-v6-loopback":
            self._redirect(f"http://[::1]:{self.server.server_port}/img.png")
        elif path in ("/loop-a", "/loop-b"):
            self._redirect("/loop-b" if path == "/loop-a" else "/loop-a")
        elif path.startswith("/hop"):  # /hop3 → /hop2 → /hop1 → /img.png
            n = int(path[4:])
            self._redirect(f"/hop{n - 1}" if n > 1 else "/img.png")
        else:
            self._send(404, b"not found", "text/plain")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests = []  # (path, user agent) of every request
        self.connections = 0  # accepted TCP connections

    def verify_request(self, request, client_address):
        self.connections += 1
        return True


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _open(url, policy=LOOPBACK, max_bytes=CAP, **kw):
    opener = build_opener(policy, AGENT, max_bytes, **kw)
    with opener.open(url, timeout=5) as r:
        return r.status, r.read()


# --- address policy -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.254", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("127.0.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::", False),
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("172.32.0.1", True),  # just outside 172.16.0.0/12
        ("2606:4700::1", True),
        ("2001:4860:4860::8888", True),
    ],
)
def test_default_policy(ip, allowed):
    assert AddressPolicy().is_allowed(ip) is allowed


@pytest.mark.parametrize(
    ("networks", "ip", "allowed"),
    [
        (("127.0.0.1/32",), "127.0.0.1", True),
        (("127.0.0.1/32",), "127.0.0.2", False),
        (("127.0.0.0/8",), "127.9.9.9", True),
        (("10.1.2.3",), "10.1.2.3", True),  # a bare address is a /32
        (("10.0.0.0/8",), "192.168.0.1", False),
        (("::1/128",), "::1", True),
        (("127.0.0.1/32",), "::1", False),
        (("224.0.0.0/4",), "224.0.0.1", True),  # explicitly allowed wins
        (("10.0.0.0/8",), "8.8.8.8", True),  # public stays allowed
    ],
)
def test_allow_list(networks, ip, allowed):
    assert AddressPolicy(parse_networks(networks)).is_allowed(ip) is allowed


@pytest.mark.parametrize(
    ("values", "field"),
    [(("10.0.0.0/8", "bogus"), "allow_networks"), (("10.0.0.0/33",), "allow_networks"), (("::1/200",), "nets")],
)
def test_parse_networks_error_names_field_and_value(values, field):
    bad = values[-1]
    with pytest.raises(ValueError) as err:
        parse_networks(values, field=field)
    assert str(err.value).startswith(f"{field}: {bad!r} is not an IP network")


def test_parse_networks():
    assert [str(n) for n in parse_networks(("10.1.2.3/8", "::1", "127.0.0.1/32"))] == [
        "10.0.0.0/8", "::1/128", "127.0.0.1/32"]
    assert parse_networks(()) == ()


def test_loopback_is_refused_before_connecting(server):
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1.*non-public"):
        _open(server.url + "/img.png", policy=AddressPolicy())
    assert _open(server.url + "/img.png") == (200, PNG)  # the server works, and has answered in order
    assert server.requests == [("/img.png", AGENT)]
    assert server.connections == 1


@pytest.mark.parametrize(
    ("path", "target"),
    [("/to-private", "10.0.0.1"), ("/to-metadata", "169.254.169.254"), ("/to-v6-loopback", "::1")],
)
def test_redirect_to_a_forbidden_address_is_refused(server, path, target):
    # a connection attempt would fail with ConnectionRefusedError (tests/conftest.py): BlockedAddress means none
    with pytest.raises(BlockedAddress) as err:
        _open(server.url + path)
    assert type(err.value) is BlockedAddress
    assert f"non-public address {target}" in str(err.value)
    assert [p for p, _ in server.requests] == [path]


def test_unresolvable_host_is_a_plain_url_error():
    with pytest.raises(urllib.error.URLError) as err:
        _open("http://no-such-host.test/a.png")
    assert not isinstance(err.value, BlockedAddress)
    assert str(err.value.reason).startswith("cannot resolve no-such-host.test")


# --- responses ----------------------------------------------------------------------------------------------------------


def test_user_agent_reaches_the_server_on_every_hop(server):
    req = urllib.request.Request(server.url + "/hop2", headers={"User-Agent": "Python-urllib/3 spoof"})
    with build_opener(LOOPBACK, AGENT, CAP).open(req, timeout=5) as r:
        assert r.read() == PNG
    assert AGENT == "mithridate/0.1 (+https://contact.example/mithridate)"
    assert server.requests == [("/hop2", AGENT), ("/hop1", AGENT), ("/img.png", AGENT)]


@pytest.mark.parametrize("path", ["/big", "/big-chunked", "/big-nolength"])
def test_body_cap(server, path):
    with pytest.raises(BodyTooLarge, match=f"max_bytes={CAP}"):
        _open(server.url + path)


@pytest.mark.parametrize("path", ["/big-chunked", "/big-nolength"])
def test_body_cap_holds_for_chunked_reads(server, path):
    got = b""
    with build_opener(LOOPBACK, AGENT, CAP).open(server.url + path, timeout=5) as r:
        with pytest.raises(BodyTooLarge):
            while chunk := r.read(300):
                got += chunk
    assert len(got) == 900  # three reads of 300 passed; the fourth crossed the cap


def test_body_at_the_cap_is_accepted(server):
    assert _open(server.url + "/exact") == (200, b"x" * CAP)
    assert _open(server.url + "/big", max_bytes=BIG) == (200, b"x" * BIG)


@pytest.mark.parametrize(("path", "ok"), [("/img.png", True), ("/blob", True), ("/page.html", False)])
def test_require_image(server, path, ok):
    if ok:
        assert _open(server.url + path, require_image=True) == (200, PNG)
    else:
        with pytest.raises(urllib.error.URLError, match="wrong content-type 'text/html'"):
            _open(server.url + path, require_image=True)
    assert _open(server.url + path)[0] == 200  # without require_image everything passes


def test_on_response_sees_x_robots_tag(server):
    seen = []
    opener = build_opener(LOOPBACK, AGENT, CAP, on_response=lambda url, xrt: seen.append((url, xrt)))
    with opener.open(server.url + "/hop1", timeout=5) as r:
        r.read()
    assert seen == [(server.url + "/img.png", ["otherbot: noai", "noimageai"])]


# --- redirects ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_redirects", "ok", "paths"),
    [
        (5, True, ["/hop3", "/hop2", "/hop1", "/img.png"]),
        (3, True, ["/hop3", "/hop2", "/hop1", "/img.png"]),
        (2, False, ["/hop3", "/hop2", "/hop1"]),
        (1, False, ["/hop3", "/hop2"]),
        (0, False, ["/hop3"]),
    ],
)
def test_max_redirects_on_a_chain_of_three(server, max_redirects, ok, paths):
    if ok:
        assert _open(server.url + "/hop3", max_redirects=max_redirects) == (200, PNG)
    else:
        with pytest.raises(urllib.error.HTTPError) as err:
            _open(server.url + "/hop3", max_redirects=max_redirects)
        assert err.value.code == 302
    assert [p for p, _ in server.requests] == paths


@pytest.mark.parametrize("max_redirects", [0, 3, 5])
def test_redirect_loop_stops_at_max_redirects(server, max_redirects):
    with pytest.raises(urllib.error.HTTPError) as err:
        _open(server.url + "/loop-a", max_redirects=max_redirects)
    assert err.value.code == 302
    assert "redirect" in str(err.value)
    assert len(server.requests) == max_redirects + 1


# --- installed() --------------------------------------------------------------------------------------------------------


def test_installed_swaps_and_restores_the_default_opener(server, monkeypatch):
    previous = urllib.request.OpenerDirector()
    monkeypatch.setattr(urllib.request, "_opener", previous)
    opener = build_opener(LOOPBACK, AGENT, CAP, require_image=True)
    with installed(opener) as got:
        assert got is opener and urllib.request._opener is opener
        with urllib.request.urlopen(server.url + "/img.png", timeout=5) as r:
            assert r.read() == PNG
        with pytest.raises(urllib.error.URLError, match="wrong content-type"):
            urllib.request.urlopen(server.url + "/page.html", timeout=5)
    assert urllib.request._opener is previous
    assert server.requests == [("/img.png", AGENT), ("/page.html", AGENT)]


def test_installed_restores_after_an_exception(monkeypatch):
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(RuntimeError):
        with installed(build_opener(AddressPolicy(), AGENT, CAP)):
            raise RuntimeError("boom")
    assert urllib.request._opener is None


# --- request deadline ---------------------------------------------------------------------------------------------------

BODY = bytes(range(256)) * 400  # 100 KiB
SLOW_HOPS = {"/slow1": "/slow2", "/slow2": "/slow3", "/slow3": "/slow4", "/slow4": "/fast"}  # 0.3 s each


def _routes():
    routes = {
        "/fast": Route(BODY, "image/png"),
        "/drip": Route(b"x" * 100, "image/png", drip_s=0.2),
        "/drip-headers": Route(b"ok", "image/png", drip_s=0.2, drip_headers=True),
        "/headers10": Route(b"ok", "image/png", headers=tuple((f"X-H{i}", "v") for i in range(6))),  # + 4 = 10
        "/headers120": Route(b"ok", "image/png", headers=tuple((f"X-H{i}", "v") for i in range(120))),
        "/header-line-70k": Route(b"ok", "image/png", headers=(("X-Big", "a" * 70_000),)),
        "/headers-80k": Route(b"ok", "image/png", headers=tuple((f"X-Big{i}", "a" * 20_000) for i in range(4))),
    }
    for path, target in SLOW_HOPS.items():
        routes[path] = Route(b"", status=302, headers=(("Location", target),), delay_s=0.3)
    return routes


@pytest.fixture
def site():
    srv = SiteServer("127.0.0.1")
    srv.routes.update(_routes())
    srv.start()
    yield srv
    srv.stop()


def _timed_open(url, deadline_s=1.0, **kw):
    start = time.monotonic()
    try:
        return _open(url, deadline_s=deadline_s, **kw)
    finally:
        _timed_open.elapsed = time.monotonic() - start


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_a_dripping_server_hits_the_deadline(site, path):
    with pytest.raises(DeadlineExceeded, match=r"^<urlopen error timed out: request deadline of 1 s exceeded>$"):
        _timed_open(site.origin + path)
    assert 0.9 < _timed_open.elapsed < 1.5


def test_the_deadline_bounds_a_redirect_chain_in_total(site):
    assert _timed_open(site.origin + "/slow1", None, max_bytes=len(BODY)) == (200, BODY)  # 4 hops of 0.3 s
    assert _timed_open.elapsed > 1.2
    with pytest.raises(DeadlineExceeded):
        _timed_open(site.origin + "/slow1", 1.0, max_bytes=len(BODY))
    assert 0.9 < _timed_open.elapsed < 1.2


def test_a_fast_response_is_unaffected_by_the_deadline(site):
    assert _open(site.origin + "/fast", max_bytes=len(BODY), deadline_s=1.0) == (200, BODY)
    with build_opener(LOOPBACK, AGENT, len(BODY), deadline_s=1.0).open(site.origin + "/fast", timeout=5) as r:
        assert b"".join(iter(lambda: r.read(777), b"")) == BODY


def test_the_deadline_holds_through_the_installed_opener(site, monkeypatch):
    monkeypatch.setattr(urllib.request, "_opener", None)
    start = time.monotonic()
    with installed(build_opener(LOOPBACK, AGENT, CAP, require_image=True, deadline_s=1.0)):
        try:  # what img2dataset's download_image does: urlopen + read, str(err) is the row's error_message
            with urllib.request.urlopen(urllib.request.Request(site.origin + "/drip"), timeout=5) as r:
                r.read()
        except Exception as err:  # noqa: BLE001
            error = err
    assert 0.9 < time.monotonic() - start < 1.5
    assert isinstance(error, DeadlineExceeded)
    assert funnel.failure_reason(str(error)) == "timeout"
    assert crawler._reason(error) == "timeout"


def test_a_slow_read_within_the_deadline_still_times_out_per_read(site):
    with pytest.raises(TimeoutError):  # the per-read timeout (0.1 s) fires first, as without a deadline
        build_opener(LOOPBACK, AGENT, CAP, deadline_s=5.0).open(site.origin + "/drip", timeout=0.1).read()


@pytest.mark.parametrize("value", [0, -1.0])
def test_deadline_must_be_positive(value):
    with pytest.raises(ValueError, match=rf"^deadline_s={value!r}: must be a positive number"):
        build_opener(LOOPBACK, AGENT, CAP, deadline_s=value)


def _tls_site(tmp_path, monkeypatch):
    """A SiteServer behind TLS with a self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv = SiteServer("127.0.0.1")
    srv.routes.update(_routes())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv.httpd.socket = server_ctx.wrap_socket(srv.httpd.socket, server_side=True)
    srv.start()
    return srv


def test_the_deadline_holds_over_https(tmp_path, monkeypatch):
    srv = _tls_site(tmp_path, monkeypatch)
    url = f"https://127.0.0.1:{srv.port}"
    try:
        assert _open(url + "/fast", max_bytes=len(BODY), deadline_s=1.0) == (200, BODY)
        for path in ("/drip", "/drip-headers"):
            with pytest.raises(DeadlineExceeded):
                _timed_open(url + path)
            assert 0.9 < _timed_open.elapsed < 1.5
    finally:
        srv.stop()


# --- header caps --------------------------------------------------------------------------------------------------------


def test_header_line_cap(site):
    assert _open(site.origin + "/headers10", max_headers=10) == (200, b"ok")  # Server, Date, type, length + 6
    with pytest.raises(HeadersTooLarge, match=r"more than max_headers=9 header lines"):
        _open(site.origin + "/headers10", max_headers=9)
    with pytest.raises(HeadersTooLarge, match=r"more than max_headers=100 header lines"):
        _open(site.origin + "/headers120")


@pytest.mark.parametrize("path", ["/header-line-70k", "/headers-80k"])
def test_header_byte_cap(site, path):
    with pytest.raises(HeadersTooLarge, match=r"^<urlopen error response headers exceed max_header_bytes=65536>$"):
        _open(site.origin + path)
    assert _open(site.origin + "/headers-80k", max_header_bytes=100_000) == (200, b"ok")
    with pytest.raises(HeadersTooLarge, match="max_header_bytes=100>$"):
        _open(site.origin + "/headers10", max_header_bytes=100)


def test_a_long_header_line_under_a_larger_byte_cap_is_still_refused(site):
    with pytest.raises(HeadersTooLarge, match=r"response got more than 65536 bytes when reading header line"):
        _open(site.origin + "/header-line-70k", max_header_bytes=100_000)


@pytest.mark.parametrize(("kw", "message"), [
    ({"max_headers": 0}, "max_headers=0: must be between 1 and 100"),
    ({"max_headers": 101}, "max_headers=101: must be between 1 and 100"),
    ({"max_header_bytes": 0}, "max_header_bytes=0: must be at least 1"),
])
def test_header_caps_are_checked(kw, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        build_opener(LOOPBACK, AGENT, CAP, **kw)
