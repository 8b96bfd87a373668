"""The end-to-end benchmark harness (bench/e2e.py) runs at a tiny size and litestream-fast
passes every correctness check it makes (restore + integrity_check + content hash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(os.path.dirname(HERE), "bench", "e2e.py")


def test_e2e_harness_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    cmd = [
        sys.executable, E2E, "--smoke", "--tools", "lf",
        "--scenarios", "steady,maxrate,burst,snapshot,restore",
        "--duration", "1.5", "--maxrate-seconds", "0.5", "--burst-mib", "4",
        "--db-mib", "8", "--history-txns", "200",
        "--json", str(out), "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["lf_checks_passed"] is True
    assert not res.get("crashes"), res.get("crashes")
    assert not res["failures"], res["failures"]
    checked = 0
    for sc in ("steady", "maxrate", "burst", "snapshot", "restore"):
        rows = [r for r in res[sc] if r["tool"] == "lf"]
        assert rows, sc
        for r in rows:
            assert r["ok"], (sc, r)
            if sc != "snapshot":
                assert r["integrity"] == "ok" and r["hash_ok"] is True, (sc, r)
                checked += 1
            if sc in ("steady", "maxrate", "burst"):
                assert r["markers_seen"] == r["markers"], (sc, r)
                assert r["lag_last_s"] >= 0
    assert checked >= 5
    assert "litestream-fast" in p.stdout and "FAIL" not in p.stdout
