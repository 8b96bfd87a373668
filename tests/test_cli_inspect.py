"""``generations``, ``snapshots``, ``wal`` and ``databases``: columns, alignment, filters,
JSON and errors — compared byte for byte with the real Litestream v0.3.13 where it can be.

Replicas are built by the test writer with fixed object mtimes (and a fixed DB mtime), so
even the ``lag`` column is deterministic.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from click.testing import CliRunner
from replica_writer import ReplicaWriter, at, set_mtime
from support import litestream_bin

from litestream_fast.cli import cli, commands  # noqa: F401  (registers the commands)
from litestream_fast.cli.inspect import go_duration, tabwrite, truncate_duration

ENV = {**os.environ, "TZ": "UTC"}
GEN_A1, GEN_A2, GEN_B = "a1" * 8, "a2" * 8, "b0" * 8


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _ok(*args: str) -> str:
    r = _run(*args)
    assert r.exit_code == 0, r.output
    return r.stdout


def _theirs(*args: str) -> str:
    r = subprocess.run([litestream_bin("0.3.13"), *args], capture_output=True, text=True,
                       env=ENV, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A DB in a config with replicas "a" (two generations) and "b" (one generation)."""
    d = tmp_path_factory.mktemp("inspect")
    db = str(d / "app.db")
    writers = []
    for name, gen, t0 in (("a", GEN_A1, 0), ("a", GEN_A2, 100), ("b", GEN_B, 50)):
        w = ReplicaWriter(str(d / f"src-{gen}.db"), str(d / name), generation=gen)
        w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        w.snapshot(mtime=at(t0))
        for k in range(1, 4):
            w.insert_rows(k * 5, size=300)
            w.sync(mtime=at(t0 + 7.5 * k), split=2 if k == 2 else 1)
        if gen == GEN_A2:
            w.next_index()
            w.insert_rows(3)
            w.sync(mtime=at(t0 + 30))
            w.snapshot(mtime=at(t0 + 31))
        writers.append(w)
    for w in writers:
        w.close()
    # The configured database itself: its mtime fixes the "lag" column.
    with open(db, "wb") as f, open(writers[0].db_path, "rb") as src:
        f.write(src.read())
    set_mtime(db, at(3725.5))
    cfg = d / "litestream.yml"
    cfg.write_text(
        f"dbs:\n  - path: {db}\n    replicas:\n"
        f"      - name: a\n        path: {d / 'a'}\n"
        f"      - name: b\n        path: {d / 'b'}\n"
        f"  - path: {d / 'other.db'}\n    replicas:\n      - url: file://{d / 'c'}\n"
    )
    return {"dir": d, "db": db, "cfg": str(cfg), "url": f"file://{d / 'a'}"}


# --------------------------------------------------------------------------- formatting


def test_tabwrite_alignment():
    assert tabwrite([["a", "bb", "c"], ["dddd", "e", "f"]]) == "a     bb  c\ndddd  e   f\n"
    assert tabwrite([["x"]]) == "x\n"


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (1_234_000, "1.234ms"),
        (1_500_000_000, "1.5s"),
        (8_300_000_000, "8.3s"),
        (90 * 10**9, "1m30s"),
        (321 * 10**9, "5m21s"),
        (3600 * 10**9, "1h0m0s"),
        (26 * 3600 * 10**9 + 5 * 10**8, "26h0m0.5s"),
        (-2 * 10**9, "-2s"),
    ],
)
def test_go_duration(ns, text):
    assert go_duration(ns) == text


def test_truncate_duration():
    assert truncate_duration(12_345_678_901) == 12 * 10**9
    assert truncate_duration(1_234_567_891) == 1_200_000_000
    assert truncate_duration(500_123_456) == 500_000_000
    assert truncate_duration(1_234_567) == 1_000_000
    assert truncate_duration(1_234) == 1_000
    assert truncate_duration(-12_345_678_901) == -12 * 10**9


# --------------------------------------------------------------------------- outputs


def test_databases_matches_litestream(setup):
    ours = _ok("databases", "-config", setup["cfg"])
    assert ours == _theirs("databases", "-config", setup["cfg"])
    assert ours.splitlines()[1].split() == [setup["db"], "a,b"]
    d = json.loads(_ok("databases", "-config", setup["cfg"], "-json"))
    assert d[0] == {"path": setup["db"], "replicas": ["a", "b"]}
    assert d[1]["replicas"] == ["file"]


def _assert_same_as_theirs(*args: str) -> None:
    """Our output equals Litestream's, byte for byte. With a replica URL, ``generations``
    measures lag against the clock, so the two runs can fall on either side of a second:
    then ours, run once more just after theirs, must equal it (theirs ran between ours)."""
    before = _ok(*args)
    theirs = _theirs(*args)
    if before != theirs:
        assert _ok(*args) == theirs


@pytest.mark.parametrize("cmd", ["generations", "snapshots", "wal"])
def test_listings_match_litestream(setup, cmd):
    _assert_same_as_theirs(cmd, "-config", setup["cfg"], setup["db"])
    _assert_same_as_theirs(cmd, "-config", setup["cfg"], "-replica", "b", setup["db"])
    _assert_same_as_theirs(cmd, setup["url"])


def test_wal_generation_filter_matches_litestream(setup):
    args = ["wal", "-config", setup["cfg"], "-generation", GEN_A2, setup["db"]]
    out = _ok(*args)
    assert out == _theirs(*args)
    rows = [line.split() for line in out.splitlines()[1:]]
    assert {r[1] for r in rows} == {GEN_A2}
    assert [(r[2], r[3]) for r in rows][-1][0] == "1"


def test_generations_columns(setup):
    out = _ok("generations", "-config", setup["cfg"], setup["db"])
    lines = out.splitlines()
    assert lines[0].split() == ["name", "generation", "lag", "start", "end"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    # DB mtime is at(3725.5); generation a2 ends at at(131) -> 3594.5 s -> "59m54s".
    assert rows[GEN_A2] == ["a", GEN_A2, "59m54s", "2024-01-01T00:01:40Z", "2024-01-01T00:02:11Z"]
    assert rows[GEN_A1][2:] == ["1h1m43s", "2024-01-01T00:00:00Z", "2024-01-01T00:00:22Z"]
    assert rows[GEN_B][0] == "b"
    # Columns are aligned: every line has its 3rd column at the same character position.
    p = lines[0].index("lag")
    assert all(line[p] != " " and line[p - 1] == " " for line in lines)


def test_json_outputs(setup):
    gens = json.loads(_ok("generations", "-json", "-config", setup["cfg"], setup["db"]))
    by_gen = {g["generation"]: g for g in gens}
    assert by_gen[GEN_A2]["lag_seconds"] == pytest.approx(3594.0)
    assert by_gen[GEN_A2]["start"] == "2024-01-01T00:01:40Z"
    assert by_gen[GEN_A2]["snapshots"] == 2
    snaps = json.loads(_ok("snapshots", "-json", "-config", setup["cfg"], setup["db"]))
    assert {(s["replica"], s["generation"], s["index"]) for s in snaps} == {
        ("a", GEN_A1, 0), ("a", GEN_A2, 0), ("a", GEN_A2, 1), ("b", GEN_B, 0)
    }  # fmt: skip
    wal = json.loads(_ok("wal", "-json", "-replica", "b", "-config", setup["cfg"], setup["db"]))
    assert all(w["replica"] == "b" for w in wal) and len(wal) == 4
    assert wal[0]["offset"] == 0 and wal[0]["created"] == "2024-01-01T00:00:57.5Z"
    assert [w["offset"] for w in wal] == sorted(w["offset"] for w in wal)


# --------------------------------------------------------------------------- errors


def _err(*args: str) -> str:
    r = _run(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_errors(setup, tmp_path):
    cfg, db, url = setup["cfg"], setup["db"], setup["url"]
    assert "cannot specify a replica URL and the -config flag" in _err("wal", "-config", cfg, url)
    assert "database path or replica URL required" in _err("snapshots")
    assert f"config file not found: {tmp_path}/nope.yml" in _err(
        "generations", "-config", str(tmp_path / "nope.yml"), db
    )
    assert "database not found in config" in _err("wal", "-config", cfg, str(tmp_path / "x.db"))
    assert f'replica "zz" not found for database "{db}"' in _err(
        "snapshots", "-config", cfg, "-replica", "zz", db
    )
    assert "too many arguments" in _err("databases", "-config", cfg, "extra")


def test_listing_failure_reports_and_continues(setup, tmp_path):
    """One broken replica: its error is printed, the others listed, exit status 1."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "generations").write_text("not a directory")
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"dbs:\n  - path: {setup['db']}\n    replicas:\n"
        f"      - name: bad\n        path: {broken}\n"
        f"      - name: b\n        path: {setup['dir'] / 'b'}\n"
    )
    r = _run("snapshots", "-config", str(cfg), setup["db"])
    assert r.exit_code == 1
    assert "error: replica bad:" in r.stderr
    assert GEN_B in r.stdout
