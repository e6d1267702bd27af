"""A hostile loopback web: dripping pages and images, a robots.txt per image host (one 503, one dripping),
wildcard and `$` rules, ai.txt prefix rules. A crawl and a download end within their deadlines, and under
`honor` exactly the opted-out images are excluded (0 leaks against the ground truth, nothing else)."""

import io
import json
import random
import time

import pytest
from PIL import Image

from curation.acquire import crawler, downloader, pairs
from curation.world import webcontent as wc
from curation.world.webserver import Route, SiteServer
from mithridate.core import schema, stats_files

DEADLINE = 1.5
DRIP = 0.25  # seconds per byte: a 2 KB body would take minutes

# image host → (robots.txt route or None = 404, ai.txt text or None, {path: opted out for training?})
HOSTS = {
    "wild": (Route(b"User-agent: *\nDisallow: /*.png$\n\nUser-agent: GPTBot\nDisallow: /art/\n", "text/plain"),
             None, {"/a/1.png": True, "/a/2.jpg": False, "/a/4.png?v=1": False, "/art/3.jpg": True}),
    "down": (Route(b"oops", "text/plain", status=503), None, {"/x/5.jpg": True}),
    "aitxt": (None, "User-Agent: *\nDisallow: /images\n", {"/images/6.jpg": True, "/imagery/7.jpg": False}),
    "longest": (Route(b"User-agent: *\nDisallow: /\nAllow: /img/\n", "text/plain"), None,
                {"/img/8.jpg": False, "/other/9.jpg": True}),
    "dripimg": (None, None, {"/slow/10.jpg": False}),  # allowed, but the image drips: a timeout
    "driprobots": (Route(b"User-agent: *\nAllow: /\n" * 50, "text/plain", drip_s=DRIP, drip_headers=True), None,
                   {"/ok/11.jpg": True}),  # robots.txt never arrives in time: unreachable, complete disallow
}


def _image(seed: int, fmt: str) -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    im.save(buf, "PNG" if fmt == "png" else "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile():
    servers = {name: SiteServer(f"127.0.0.{30 + k}") for k, name in enumerate(("page", *HOSTS))}
    truth, tags = {}, []
    for k, (name, (robots_route, ai, paths)) in enumerate(HOSTS.items()):
        srv = servers[name]
        if robots_route is not None:
            srv.routes["/robots.txt"] = robots_route
        if ai is not None:
            srv.routes["/ai.txt"] = Route(ai.encode(), "text/plain")
        for j, (path, opted) in enumerate(paths.items()):
            body = _image(10 * k + j, path.split("?")[0].rsplit(".", 1)[1])
            drip = DRIP if name == "dripimg" else 0.0
            srv.routes[path] = Route(body, "image/png" if ".png" in path else "image/jpeg", drip_s=drip)
            truth[srv.origin + path] = opted
            tags.append(f'<img src="{srv.origin}{path}" alt="work {path}">')
    page = servers["page"]
    page.routes["/robots.txt"] = Route(b"User-agent: *\nDisallow: /private/\n", "text/plain")
    page.routes["/"] = Route(wc.page("hostile", ['<a href="/gallery.html">g</a>', '<a href="/drip.html">d</a>',
                                                  '<a href="/private/p.html">p</a>']).encode())
    page.routes["/gallery.html"] = Route(wc.page("gallery", tags).encode())
    page.routes["/drip.html"] = Route(wc.page("drip", ["x" * 2000]).encode(), drip_s=DRIP)
    for srv in servers.values():
        srv.start()
    yield page.origin, truth
    for srv in servers.values():
        srv.stop()


def _timed(fn, *args):
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


def _crawl(origin, out):
    cfg = crawler.CrawlConfig(seeds=(origin + "/",), out=str(out), timeout_s=30.0, deadline_s=DEADLINE,
                              robots_deadline_s=DEADLINE, retries=0, allow_networks=("127.0.0.0/8",))
    return _timed(crawler.run, cfg)[1]


def _download(pairs, out, policy="honor"):
    cfg = downloader.DownloadConfig(pairs=str(pairs), out=str(out), policy=policy, timeout_s=30.0,
                                    deadline_s=DEADLINE, robots_deadline_s=DEADLINE, threads=8,
                                    allow_networks=("127.0.0.0/8",))
    elapsed = _timed(downloader.run, cfg)[1]
    return schema.read_folder(out, "shard").to_pandas(), elapsed


def test_crawl_and_download_end_within_their_deadlines_with_no_leak(hostile, tmp_path):
    origin, truth = hostile
    crawl_s = _crawl(origin, tmp_path / "crawl")
    stats = stats_files.read(tmp_path / "crawl")
    assert stats["pages_failed:timeout"] == 1 and stats["pages_disallowed_by_robots"] == 1  # drip.html, private/
    assert crawl_s < 6 * DEADLINE + 5, crawl_s  # a dripping page and a dripping robots.txt cost a deadline each
    hosts = {r["host"]: r for r in json.loads((tmp_path / "crawl" / "hosts.json").read_text())}
    assert sum(r["robots"] == "unreachable" for r in hosts.values()) == 2  # the 503 and the dripping robots.txt

    shards, download_s = _download(tmp_path / "crawl" / "pairs", tmp_path / "shards")
    assert download_s < 4 * DEADLINE + 10, download_s
    assert set(shards["url"]) == set(truth)
    status = dict(zip(shards["url"], shards["status"]))
    leaks = [u for u, opted in truth.items() if opted and status[u] != schema.STATUS_OPTED_OUT]
    wrongly = [u for u, opted in truth.items() if not opted and status[u] == schema.STATUS_OPTED_OUT]
    assert leaks == [] and wrongly == []
    slow = shards[shards["url"].str.endswith("/slow/10.jpg")].iloc[0]
    assert slow["status"] == "failed_to_download" and "timed out" in slow["error_message"]
    fetched = [u for u, opted in truth.items() if not opted and not u.endswith("/slow/10.jpg")]
    assert all(status[u] == schema.STATUS_SUCCESS for u in fetched)


def test_signals_name_the_host_whose_file_decided(hostile, tmp_path):
    origin, truth = hostile
    _crawl(origin, tmp_path / "crawl")
    pairs = schema.read_folder(tmp_path / "crawl" / "pairs", "pairs").to_pandas()
    sig = {u: list(s) for u, s in zip(pairs["url"], pairs["signals"])}
    by_path = {u.split("/", 3)[3]: (u.split("/")[2], s) for u, s in sig.items()}
    host, s = by_path["art/3.jpg"]
    assert s == [f"robots:GPTBot@{host}"]
    host, s = by_path["a/1.png"]
    assert f"robots:mithridate@{host}" in s and f"robots:CCBot@{host}" in s
    assert by_path["x/5.jpg"][1] == [f"robots:unreachable@{by_path['x/5.jpg'][0]}"]
    assert by_path["images/6.jpg"][1] == [f"ai.txt@{by_path['images/6.jpg'][0]}"]
    assert by_path["a/4.png?v=1"][1] == [] and by_path["imagery/7.jpg"][1] == [] and by_path["img/8.jpg"][1] == []


def test_a_url_list_without_crawl_signals_is_judged_by_each_image_host(hostile, tmp_path):
    """The downloader reads each image host's files itself: a URL list leaks nothing either."""
    _, truth = hostile
    (tmp_path / "urls.txt").write_text("\n".join(truth) + "\n")
    folder = pairs.run(pairs.PairsConfig(input=str(tmp_path / "urls.txt"), out=str(tmp_path / "pairs")))
    shards, _ = _download(folder, tmp_path / "shards")
    status = dict(zip(shards["url"], shards["status"]))
    assert {u for u, st in status.items() if st == schema.STATUS_OPTED_OUT} == {u for u, o in truth.items() if o}


def test_ignore_fetches_what_honor_excludes(hostile, tmp_path):
    """The positive control of the test above: without the policy the opted-out images do download."""
    _, truth = hostile
    (tmp_path / "urls.txt").write_text("\n".join(truth) + "\n")
    folder = pairs.run(pairs.PairsConfig(input=str(tmp_path / "urls.txt"), out=str(tmp_path / "pairs")))
    shards, _ = _download(folder, tmp_path / "shards", policy="ignore")
    status = dict(zip(shards["url"], shards["status"]))
    assert all(status[u] == schema.STATUS_SUCCESS for u, opted in truth.items() if opted)
