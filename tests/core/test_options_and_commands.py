"""mithridate.core.options (presets, typed overrides, config.json), mithridate.core.commands and the `mithridate` CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from curation.acquire import downloader
from mithridate import cli
from mithridate.core.options import opt, resolve, write_config


@dataclass(frozen=True)
class ToyConfig:
    name: str = opt("toy", "a name")
    count: int = opt(3, "how many")
    ratio: float = opt(0.5, "a ratio")
    flag: bool = opt(False, "a switch")
    tags: tuple[str, ...] = opt(("a",), "tags")
    sizes: tuple[int, ...] = opt((1, 2), "sizes")
    mode: Literal["fast", "slow"] = opt("fast", "speed")
    limit: Optional[int] = opt(None, "an optional limit")  # noqa: UP007 - the typing.Optional spelling on purpose
    seed: int | None = opt(None, "an optional seed, PEP 604 spelling")


TOY_PRESETS = {"default": ToyConfig(), "big": ToyConfig(count=100, tags=("x", "y"))}
TOY_FIELDS = "name, count, ratio, flag, tags, sizes, mode, limit, seed"


# --- resolve ------------------------------------------------------------------------------------------------------------


def test_resolve_presets():
    assert resolve(ToyConfig, TOY_PRESETS, "default", {}) == ToyConfig()
    assert resolve(ToyConfig, TOY_PRESETS, "big", {"count": None, "tags": None}) == ToyConfig(count=100, tags=("x", "y"))
    assert resolve(ToyConfig, TOY_PRESETS, "big", {"count": "5"}) == ToyConfig(count=5, tags=("x", "y"))


@pytest.mark.parametrize(
    ("field", "raw", "value"),
    [
        ("name", "hello, world", "hello, world"),
        ("count", "7", 7),
        ("count", "-2", -2),
        ("ratio", "1e-3", 0.001),
        ("ratio", "2", 2.0),
        ("flag", "true", True),
        ("flag", "YES", True),
        ("flag", "1", True),
        ("flag", "on", True),
        ("flag", "False", False),
        ("flag", "0", False),
        ("flag", "off", False),
        ("tags", "a, b ,,c", ("a", "b", "c")),
        ("tags", "", ()),
        ("sizes", "4,5", (4, 5)),
        ("mode", "slow", "slow"),
        ("limit", "12", 12),
        ("limit", "none", None),
        ("limit", "NULL", None),
        ("limit", "", None),
        ("seed", "7", 7),
        ("seed", "None", None),
    ],
)
def test_resolve_typed_overrides(field, raw, value):
    cfg = resolve(ToyConfig, TOY_PRESETS, "default", {field: raw})
    got = getattr(cfg, field)
    assert got == value and type(got) is type(value)
    assert cfg == dataclasses.replace(ToyConfig(), **{field: value})


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("count", "abc", "--count='abc': expected int"),
        ("count", "1.5", "--count='1.5': expected int"),
        ("ratio", "fast", "--ratio='fast': expected float"),
        ("flag", "maybe", "--flag='maybe': expected true or false"),
        ("mode", "medium", "--mode='medium': allowed values are fast, slow"),
        ("mode", "FAST", "--mode='FAST': allowed values are fast, slow"),
        ("sizes", "1,x", "--sizes='x': expected int"),
        ("limit", "lots", "--limit='lots': expected int"),
        ("seed", "1.5", "--seed='1.5': expected int"),
    ],
)
def test_resolve_rejects_bad_values(field, raw, message):
    with pytest.raises(ValueError) as err:
        resolve(ToyConfig, TOY_PRESETS, "default", {field: raw})
    assert str(err.value) == message


def test_resolve_unknown_field_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        resolve(ToyConfig, TOY_PRESETS, "default", {"colour": "red"})
    assert str(err.value) == f"unknown field 'colour' for ToyConfig; valid fields: {TOY_FIELDS}"


def test_resolve_unknown_preset():
    with pytest.raises(ValueError) as err:
        resolve(ToyConfig, TOY_PRESETS, "huge", {})
    assert str(err.value) == "--preset='huge': allowed values are big, default"


def test_resolve_runs_the_config_checks():
    cfg = resolve(downloader.DownloadConfig, downloader.PRESETS, "tiny",
                  {"policy": "record", "allow_networks": "127.0.0.0/8, 10.0.0.0/8", "timeout_s": "2.5"})
    assert (cfg.policy, cfg.allow_networks, cfg.timeout_s, cfg.threads) == (
        "record", ("127.0.0.0/8", "10.0.0.0/8"), 2.5, 16)
    with pytest.raises(ValueError, match=r"^DownloadConfig\.threads=0: must be > 0$"):
        resolve(downloader.DownloadConfig, downloader.PRESETS, "default", {"threads": "0"})
    with pytest.raises(ValueError, match=r"^allow_networks: 'nope' is not an IP network"):
        resolve(downloader.DownloadConfig, downloader.PRESETS, "default", {"allow_networks": "nope"})


def test_opt_refuses_mutable_defaults():
    with pytest.raises(TypeError, match="tuple"):
        opt([1, 2], "a list")


def test_write_config(tmp_path):
    cfg = resolve(ToyConfig, TOY_PRESETS, "big", {"limit": "4", "flag": "yes"})
    path = write_config(cfg, tmp_path / "run" / "stage")
    assert path == tmp_path / "run" / "stage" / "config.json"
    text = path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"_config": "ToyConfig", "name": "toy", "count": 100, "ratio": 0.5, "flag": True,
                                "tags": ["x", "y"], "sizes": [1, 2], "mode": "fast", "limit": 4, "seed": None}
    assert list(json.loads(text)) == sorted(json.loads(text))  # stable key order
    assert write_config(cfg, tmp_path, name="other.json").read_text() == text


# --- the CLI ------------------------------------------------------------------------------------------------------------

# every command of the merged table: each one's --help must render and list every config field
SUBCOMMANDS = [(list(words), entry.load()[0]) for words, entry in cli.COMMANDS.items()]


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_top_level_help(capsys):
    code, out, _ = _exit_code(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: mithridate")
    for name in ("art", "web", "crawl", "pairs", "download", "demo"):
        assert f"\n    {name} " in out, name


@pytest.mark.parametrize(("group", "sub"), [("art", "build"), ("web", "serve")])
def test_group_help(capsys, group, sub):
    code, out, _ = _exit_code([group, "--help"], capsys)
    assert code == 0 and f"usage: mithridate {group}" in out and sub in out


@pytest.mark.parametrize(("argv", "cls"), SUBCOMMANDS, ids=[" ".join(a) for a, _ in SUBCOMMANDS])
def test_subcommand_help_lists_every_field(capsys, argv, cls):
    code, out, _ = _exit_code([*argv, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: mithridate {' '.join(argv)}")
    assert "--preset {" in out
    for f in dataclasses.fields(cls):
        assert f"--{f.name} " in out or f"--{f.name}\n" in out, f.name


def test_download_help_shows_choices_and_defaults(capsys):
    _, out, _ = _exit_code(["download", "--help"], capsys)
    assert "--policy {honor,record,ignore}" in out
    assert "(default: 64)" in out  # threads


def test_bad_int_is_a_one_line_error(capsys, tmp_path):
    assert cli.main(["download", "--threads=abc", f"--out={tmp_path / 'out'}"]) == 2
    out, err = capsys.readouterr()
    assert err == "mithridate: error: --threads='abc': expected int\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["download", "--policy=maybe"], "argument --policy: invalid choice: 'maybe'"),
        (["download", "--preset=huge"], "argument --preset: invalid choice: 'huge'"),
        (["download", "--no_such_field=1"], "unrecognized arguments: --no_such_field=1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["art"], "the following arguments are required: SUBCOMMAND"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_argparse_errors_exit_2(capsys, argv, needle):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2
    assert needle in err


def test_crawl_without_seeds(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["crawl"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("mithridate: error: ")
    assert "seeds" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["crawl", "--seeds=ftp://site.test/"], "CrawlConfig.seeds: 'ftp://site.test/' is not an absolute http(s) URL"),
        (["crawl", "--seeds=http://127.0.0.1/", "--allow_networks=10.0.0.0/99"],
         "allow_networks: '10.0.0.0/99' is not an IP network such as 127.0.0.0/8 or 10.1.2.3/32"),
        (["crawl", "--seeds=http://127.0.0.1/", "--max_pages=0"], "CrawlConfig.max_pages=0: must be > 0"),
        (["download", "--encode_quality=101"], "DownloadConfig.encode_quality=101: must be within [0, 100]"),
    ],
)
def test_invalid_configs_are_one_line_errors(capsys, argv, message):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"mithridate: error: {message}\n"


def test_download_with_missing_pairs(capsys, tmp_path):
    assert cli.main(["download", "--pairs=/nonexistent", f"--out={tmp_path / 'shards'}"]) == 2
    assert capsys.readouterr().err == "mithridate: error: no pairs parquet files in /nonexistent\n"


@pytest.mark.parametrize(("module", "commands"), [("curation", ("crawl", "download")), ("diffusion", ("train", "sample")),
                                                  ("poisoning", ("poison",)), ("reports", ("report", "demo")),
                                                  ("mithridate", ("crawl", "download", "train", "poison"))])
def test_python_dash_m_help(module, commands):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: {module}")
    assert all(c in res.stdout for c in commands)


# --- a fast CLI, examples, --config, the Python API -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["crawl", "--help"], ["poison", "--help"]])
def test_help_imports_no_torch(argv):
    code = f"import sys; from mithridate.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules, 'diffusion.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_a_name_in_two_tables_is_an_error():
    from mithridate.core.commands import Command, merge

    table = {("crawl",): Command("curation.acquire.crawler", "CrawlConfig", "crawl")}
    with pytest.raises(ValueError, match="'crawl' is defined by both a and b"):
        merge(("a", table), ("b", table))


EXAMPLES = [(words, e) for words, c in cli.COMMANDS.items() for e in c.examples]


def test_every_leaf_command_has_an_example():
    assert {w for w, _ in EXAMPLES} == set(cli.COMMANDS)


@pytest.mark.parametrize(("words", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_examples_name_their_command_and_only_real_options(words, example):
    import shlex

    from mithridate.core import commands

    argv = shlex.split(example)
    assert argv[0] == "mithridate" and tuple(argv[1 : 1 + len(words)]) == words
    args = commands.build_parser(cli.COMMANDS, "mithridate", "", argv[1:]).parse_args(argv[1:])
    cls, presets, _ = cli.COMMANDS[words].load()
    commands._config(cls, presets, args)  # every value parses and passes the config's checks


def test_help_ends_with_examples(capsys):
    _, out, _ = _exit_code(["download", "--help"], capsys)
    assert out.rstrip().endswith(cli.COMMANDS[("download",)].examples[-1])


def test_config_reruns_a_saved_config_with_overrides(tmp_path):
    from mithridate.core import commands

    saved = write_config(dataclasses.replace(downloader.DownloadConfig(), threads=7, policy="record"), tmp_path)
    argv = ["download", f"--config={saved}", "--shard_size=5"]
    args = commands.build_parser(cli.COMMANDS, "mithridate", "", argv).parse_args(argv)
    cfg = commands._config(downloader.DownloadConfig, downloader.PRESETS, args)
    assert (cfg.threads, cfg.policy, cfg.shard_size) == (7, "record", 5)


@pytest.mark.parametrize(("extra", "content", "message"), [
    (["--preset=tiny"], None, "give one of them"),
    ([], {"_config": "CrawlConfig"}, "holds a CrawlConfig config; this command takes DownloadConfig"),
    ([], "not json", "not JSON"),
])
def test_config_errors_are_one_line(capsys, tmp_path, extra, content, message):
    path = tmp_path / "config.json"
    if content is None:
        write_config(downloader.DownloadConfig(), tmp_path)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert cli.main(["download", f"--config={path}", *extra]) == 2
    assert message in capsys.readouterr().err


def test_python_api_runs_a_command_and_documents_its_fields(tmp_path):
    import inspect

    import numpy as np

    import mithridate as mt
    from curation.select import subsets

    a, b = np.array([(1, 1), (2, 2), (3, 3)], "u8,u8"), np.array([(2, 2), (3, 3), (4, 4)], "u8,u8")
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = mt.subset(inputs=[tmp_path / "a.npy", str(tmp_path / "b.npy")], op="intersect", out=tmp_path / "both.npy")
    assert [tuple(r) for r in subsets.load(out)] == [(2, 2), (3, 3)]
    assert "op" in inspect.signature(mt.subset).parameters and "op:" in mt.subset.__doc__
    assert {"download", "filter", "train", "poison_sweep", "report_story"} <= set(dir(mt))
    with pytest.raises(ValueError, match="unknown field 'polcy' for DownloadConfig"):
        mt.download(polcy="record")
    with pytest.raises(AttributeError, match="commands: "):
        mt.frobnicate  # noqa: B018


def test_a_folder_of_an_older_version_resumes_unless_a_new_field_leaves_its_default(tmp_path):
    """A field added to a stage since a folder was written counts as its default there; any real change refuses."""
    from mithridate.core.options import check_resumable, to_dict

    saved = {k: v for k, v in to_dict(ToyConfig()).items() if k != "ratio"}  # written before `ratio` existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resumable(ToyConfig(), tmp_path)
    with pytest.raises(ValueError, match=r"holds a run with another config \(ratio: 0\.5 → 0\.7\)"):
        check_resumable(dataclasses.replace(ToyConfig(), ratio=0.7), tmp_path)
    with pytest.raises(ValueError, match="holds a run with another config"):
        check_resumable(dataclasses.replace(ToyConfig(), count=99), tmp_path)
