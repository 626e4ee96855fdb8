"""make bench's chain section (WORKLOADS=churn) at a tiny size, once, so
that it does not rot: its tables have every row, with numbers, the chain
took pages from its parents, and it leaves no tracking holder or chain key
behind.  Nothing here is timed: the numbers are the benchmark's business.

Needs root and memory tracking (soft-dirty, or userfaultfd write-protect
with PAGEMAP_SCAN) and skips, saying so, without.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from chainkeys import chain_keys
from helpers import CRIU, REPO

MIB = 32


def is_holder(pid):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[1] == b"__mem-track-holder"


def tracking():
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True,
                       timeout=60)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="make bench needs root (criu dump)")
def test_bench_churn_section(tmp_path):
    ok, why = tracking()
    if not ok:
        pytest.skip(f"the chain section needs memory tracking (soft-dirty, or userfaultfd write-protect "
                    f"with PAGEMAP_SCAN): {why}")
    env = dict(os.environ, WORKLOADS="churn", REPEAT="1", CHAIN_GAP="0.5", COST_WINDOW="200", COST_WINDOWS="2",
               BENCH_DIR=str(tmp_path), BENCH_JSON=str(tmp_path / "bench.json"))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "criusec" / "bench.py"), CRIU,
                        str(REPO / "test" / "criusec" / "workloads" / "workload.c"), str(MIB)],
                       env=env, capture_output=True, text=True, timeout=600)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    num = r"\d+(\.\d+)?"
    for mode in ("plain", "enc+zstd"):
        for label in ("full dump", "pre-dump 1", "pre-dump 2", "dump"):
            # frozen, its spread, wall, its spread, written, % of memory, parent, untracked
            row = (rf"^  {re.escape(mode)} +{label} +{num} +{num}-{num}!? +{num} +{num}-{num}!? "
                   rf"+{num} +{num} +{num} +{num}$")
            assert re.search(row, out, re.M), f"no {mode} {label} row"
        assert re.search(rf"^  {re.escape(mode)} +final dump frozen / full dump frozen: {num}x "
                         rf"\(per round {num}-{num}\); target 0.2x", out, re.M), f"no {mode} ratio"
        assert re.search(rf"^\| {MIB} \| {re.escape(mode)} \| dump / full dump, frozen \| {num}x \|", out, re.M)
    for label in ("0-0.2 s", "0.2-0.4 s"):
        assert re.search(rf"^  {re.escape(label)} +{num} +{num}-{num}!? +{num} +{num}-{num}!? +-?{num} "
                         rf"+-?{num}\.\.-?{num}$", out, re.M), f"no tracking cost row {label}"
    assert re.search(rf"cost in the first window .*: -?{num} %; target at most 5 %", out)
    # pre-dump 1 and 2 of the plain and the enc+zstd chain, and the tracked one of the two
    # processes of the tracking cost: five holders, found by the bench (the tasks they track) and all gone
    assert "tracking holders left running: 0 of the 5 that the passes left" in out

    js = json.loads((tmp_path / "bench.json").read_text())
    res = [e for e in js if e.get("workload") == "churn"]
    assert len(res) == 1 and res[0]["mib"] == MIB
    rows = {(row["mode"], row["pass"]): row for row in res[0]["rows"]}
    pages = MIB << 8
    for mode in ("plain", "zstd"):
        # The first pass and the full dump write every page; the later passes
        # take the pages not rewritten from their parent.
        assert rows[mode, "full"]["written"] >= pages and rows[mode, "pre1"]["written"] >= pages, rows
        for p in ("pre2", "dump"):
            assert 0 < rows[mode, p]["parent"] and rows[mode, p]["written"] < pages, rows
            # Untracked: special mappings only (the vDSO), never the churned memory
            assert rows[mode, p]["untracked"] < 256, rows
    for w in res[0]["cost"]:
        assert w["untracked"] > 0 and w["tracked"] > 0, res[0]["cost"]

    assert len(res[0]["holders"]) == 5 and not [p for p in res[0]["holders"] if is_holder(p)], res[0]["holders"]
    # Its encrypted dumps (enc+zstd: full, pre-dump, pre-dump, dump) each left a chain key, which
    # the bench removed (and only those: other work on the machine may have some there).
    ids = [e for e in js if "chain_keys_dropped" in e][0]["chain_keys_dropped"]
    assert len(ids) == 4, ids
    assert not {f"criusec:{i}" for i in ids} & set(chain_keys().values()), "the bench left its chain keys"
