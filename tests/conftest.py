"""Test-wide fixtures: refuse every non-loopback connection, and keep caches inside pytest's tmp dirs."""

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback_address(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback_address(address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not isinstance(host, bytes):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(f"tests may not resolve host names ({host!r})") from None
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def network_guard(monkeypatch):
    """Refuse non-loopback connections and DNS lookups, so no test can reach the internet."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A session-wide cache folder (art corpus builds are shared between tests)."""
    path = tmp_path_factory.mktemp("cache")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(cache_dir):
    """The tiny art corpus (24 concepts × the pip styles), built once per session."""
    import dataclasses

    from curation.world import art

    return art.run(dataclasses.replace(art.PRESETS["tiny"], cache_dir=str(cache_dir)))


@pytest.fixture(scope="session")
def tiny_web(tiny_corpus, tmp_path_factory):
    """The demo web on loopback, tiny preset, served for the whole session."""
    import dataclasses

    from curation.world import web

    cfg = dataclasses.replace(web.PRESETS["tiny"], art_dir=str(tiny_corpus), out=str(tmp_path_factory.mktemp("web")))
    with web.DemoWeb(cfg) as w:
        yield w


@pytest.fixture(scope="session")
def tiny_crawl(tiny_web, tmp_path_factory):
    """The tiny web crawled once: the crawl output folder."""
    from curation.acquire import crawler

    out = tmp_path_factory.mktemp("crawl")
    cfg = crawler.CrawlConfig(seeds=tuple(tiny_web.seeds), out=str(out), allow_networks=tiny_web.networks,
                              timeout_s=2.0, retries=0, warc=True)
    return crawler.run(cfg)


@pytest.fixture(scope="session")
def tiny_shards(tiny_web, tiny_crawl, tmp_path_factory):
    """The tiny crawl downloaded under the default policy (honor), in shards of 30 rows."""
    from curation.acquire import downloader

    out = tmp_path_factory.mktemp("dl") / "shards"
    downloader.run(downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), out=str(out), timeout_s=1.0,
                                             threads=16, allow_networks=tiny_web.networks, shard_size=30))
    return out


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory):
    """A randomly initialised, very small compact CLIP saved as `clip.pt` (what `clip train` writes, untrained)."""
    import dataclasses

    from curation.score import clip_train

    cfg = dataclasses.replace(clip_train.PRESETS["tiny"], embed_dim=32, vision_width=8, vision_head_width=8,
                              text_width=32, text_layers=1, text_heads=2, context_length=16)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    clip_train.save_checkpoint(clip_train.build_model(cfg), cfg, path)
    return path


@pytest.fixture(scope="session")
def tiny_train(tiny_corpus, tmp_path_factory):
    """Training shards in the export stage's TRAIN schema, built from the tiny art corpus (24 concepts × styles).

    Two shards; captions are the concept name with a varying template, artist and licence from the corpus.
    """
    import pyarrow as pa

    from curation.world import art
    from mithridate.core import schema

    df = art.load(tiny_corpus)
    templates = ("{}", "a {}", "{} emoji", "an illustration of a {}")
    rows = [{"uid": f"{i:032x}", "jpg": art.image_path(tiny_corpus, r._asdict(), 64).read_bytes(),
             "caption": templates[i % len(templates)].format(r.concept), "url": f"http://127.0.0.1/{i}.png",
             "domain": "127.0.0.1", "artist": r.artist, "licence": r.licence, "clip_score": 0.3,
             "aesthetic_score": 5.0} for i, r in enumerate(df.itertuples())]
    out = tmp_path_factory.mktemp("train")
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        schema.write(pa.Table.from_pylist(part, schema=schema.TRAIN_SCHEMA), out / f"{n:05d}.parquet", "train")
    return out


@pytest.fixture(scope="session")
def tiny_clean_model(tiny_train, tiny_clip_checkpoint, tmp_path_factory):
    """The poisoning tests' clean model: a tiny autoencoder + a 5-step tiny diffusion model on 4 concepts."""
    import dataclasses

    from diffusion import training, vae_train as vae
    from mithridate.core.compute import torch_threads

    with torch_threads(1):
        ae = vae.run(dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train),
                                         out=str(tmp_path_factory.mktemp("vae"))))
        cfg = dataclasses.replace(training.PRESETS["tiny"], data=str(tiny_train), vae=str(ae),
                                  clip=str(tiny_clip_checkpoint), out=str(tmp_path_factory.mktemp("clean")),
                                  concepts=("cat", "house", "anchor", "dog"), steps=5)
        return training.run(cfg)


@pytest.fixture(scope="session")
def tiny_sweep(tiny_train, tiny_clean_model, tmp_path_factory):
    """`poison sweep --preset=tiny` of cat → house on the clean model, with one implosion pair and a two-budget
    ε sweep."""
    import dataclasses

    from mithridate.core.compute import torch_threads
    from poisoning import sweep

    with torch_threads(1):
        cfg = dataclasses.replace(sweep.PRESETS["tiny"], data=str(tiny_train), checkpoint=str(tiny_clean_model),
                                  out=str(tmp_path_factory.mktemp("sweep")), source="cat", target="house",
                                  implosion=1, eps_sweep=(8, 255))
        return sweep.run(cfg)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a module of tiny models (spin-waiting threads crawl on a loaded 2-core machine)."""
    from mithridate.core.compute import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started once per test session (`--engine=ray` tests); skipped without Ray."""
    pytest.importorskip("ray")
    from mithridate.core import engine

    os.environ.pop("RAY_ADDRESS", None)
    ray = engine.ray_init(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_bucket(request):
    """`s3://<bucket named after the test module>` on a moto S3 server at 127.0.0.1, reached through the standard AWS
    variables (the endpoint in AWS_ENDPOINT_URL, which botocore reads; Ray tasks get them from the driver)."""
    import logging

    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    from mithridate.core import storage

    name = request.module.__name__.rpartition(".")[2].replace("_", "-")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        fs, _ = storage.fs_path(f"s3://{name}")
        fs.mkdir(name)
        yield f"s3://{name}"
        storage.release_all()  # the lock objects of this module's runs, while the server is up
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
