"""make bench's chain section (WORKLOADS=churn) and snapshot section
(WORKLOADS=snapshot) at a tiny size, once, so that they do not rot: their
tables have every row, with numbers; the chain took pages from its parents,
the copy-on-write dumps of writing processes copied pages at a fault; and
they leave no tracking holder, workload or chain key behind.  Nothing here
is timed: the numbers are the benchmark's business.

Needs root; the chain section needs memory tracking (soft-dirty, or
userfaultfd write-protect with PAGEMAP_SCAN), the snapshot section
userfaultfd write-protect with its events (--cow-dump, which falls back to a
frozen dump without: the bench says so), and each skips, saying so, without.
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
    # The tracking cost: flat out (pages/s) and paced at 5 %/s with a checksum loop (ops/s), each
    # window a row of two tables: untracked, its spread, tracked, its spread, cost %, its spread,
    # the target; then the same per CPU second, CPU ms, system ms and faults (untracked/tracked),
    # the faults expected, the extra CPU ms, per fault, and the cost with a CPU of its own.
    pct = rf"-?{num}"
    pcts = rf"{pct}\.\.{pct}"
    pair = rf"{num}/{num}"
    verdict = r"(met|NOT met|unclear \([^)]*\))"
    for kind in ("flat out", "5 %/s"):
        for label in ("0-0.2 s", "0.2-0.4 s"):
            row = (rf"^  {re.escape(kind)} +{re.escape(label)} +{num} +{num}-{num}!? +{num} +{num}-{num}!? "
                   rf"+{pct} +{pcts}  {verdict}$")
            assert re.search(row, out, re.M), f"no tracking cost row {kind} {label}"
            row = (rf"^  {re.escape(kind)} +{re.escape(label)} +{pct} +{pcts}  (met|NOT met|unclear) +{pair} "
                   rf"+{pair} +{pair} +{num} +{pct} +{pcts} +({pct}|nan) +{pct} +{pcts}  {verdict}$")
            assert re.search(row, out, re.M), f"no tracking CPU row {kind} {label}"
            unit = "flat out, pages/s" if kind == "flat out" else "5 %/s + checksums, ops/s"
            for cols in (rf"{num} \| {num}-{num}!? \| {num} \|", rf"{pair} \| {pair} \| {pair} \| {num} \|"):
                assert re.search(rf"^\| {MIB} \| {re.escape(unit)} \| {re.escape(label)} \| {cols}", out, re.M), \
                    f"no summary row {kind} {label}"
        assert re.search(rf"^  {re.escape(kind)}: cost in the first window .* {pct} % \(per round {pcts}\), "
                         rf"in the last {pct} %; target at most 5 %: {verdict}; per CPU second {pct} % \({pcts}\): "
                         rf"{verdict}; with a CPU of its own {pct} % \({pcts}\): {verdict}$", out, re.M), \
            f"no {kind} verdict"
    # The paced rows' cost estimated from a fault's cost flat out, per window.
    est = rf"{re.escape(label)}: {num} faults, {pct} ms, {pct} % of a CPU of its own"
    assert re.search(rf"^  5 %/s, from the cost of a fault flat out in the first window \({pct} us\) and its "
                     rf"faults:\n  {est.replace(re.escape(label), re.escape('0-0.2 s'))}; "
                     rf"{est.replace(re.escape(label), re.escape('0.2-0.4 s'))}$", out, re.M), "no estimate"
    # pre-dump 1 and 2 of the plain and the enc+zstd chain, and the tracked one of the two
    # processes of each tracking cost (flat out, paced): six holders, found by the bench (the
    # tasks they track) and all gone
    assert "tracking holders left running: 0 of the 6 that the passes left" in out

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
    cost = res[0]["cost"]
    assert set(cost) == {"flat", "paced"} and all(len(cost[k]) == 2 for k in cost), cost
    for k in cost:
        for w in cost[k]:
            assert w["untracked"] > 0 and w["tracked"] > 0 and w["pages"] > 0, cost
    # The paced process wrote at its rate (5 % of the pages a second: 0.2 s of it, about 1 % of
    # the memory; its catch-up may add a write or two), and in the first window after the pass
    # the tracked one faulted, the untracked one did not have to.
    p0 = cost["paced"][0]
    assert abs(p0["pages"] - 0.01 * pages) <= 0.5 * 0.01 * pages, p0
    uf, tf = p0["faults"]
    assert tf > uf and p0["expected"] > 0, p0
    assert [e["faults"] for e in res[0]["estimate"]] == [w["faults"][1] - w["faults"][0] for w in cost["paced"]]

    assert len(res[0]["holders"]) == 6 and not [p for p in res[0]["holders"] if is_holder(p)], res[0]["holders"]
    # Its encrypted dumps (enc+zstd: full, pre-dump, pre-dump, dump) each left a chain key, which
    # the bench removed (and only those: other work on the machine may have some there).
    ids = [e for e in js if "chain_keys_dropped" in e][0]["chain_keys_dropped"]
    assert len(ids) == 4, ids
    assert not {f"criusec:{i}" for i in ids} & set(chain_keys().values()), "the bench left its chain keys"


def cowsweeps(where):
    """The cowsweep processes running a binary under where (the bench's own)."""
    pids = subprocess.run(["pgrep", "-x", "cowsweep"], capture_output=True, text=True).stdout.split()
    mine = []
    for p in pids:
        try:
            if os.readlink(f"/proc/{p}/exe").startswith(str(where)):
                mine.append(p)
        except OSError:
            pass
    return mine


@pytest.mark.skipif(os.geteuid() != 0, reason="make bench needs root (criu dump)")
@pytest.mark.parametrize("chain", [False, True], ids=["alone", "in-a-chain"])
def test_bench_snapshot_section(tmp_path, chain):
    """SNAP_CHAIN=1: each dump the second pass of a chain, over a pre-dump."""
    env = dict(os.environ, WORKLOADS="snapshot", REPEAT="1", BENCH_DIR=str(tmp_path),
               BENCH_JSON=str(tmp_path / "bench.json"), SNAP_CHAIN="1" if chain else "0")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "criusec" / "bench.py"), CRIU,
                        str(REPO / "test" / "criusec" / "workloads" / "workload.c"), str(MIB)],
                       env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    m = re.search(r"^note: --cow-dump fell back to a frozen dump: (.*)$", out, re.M)
    if m:
        pytest.skip(f"the snapshot section needs --cow-dump to work here: {m.group(1)}")
    assert ("--track-mem over a pre-dump" in out) == chain, out[-3000:]
    num = r"\d+(\.\d+)?"
    for label in ("at rest", "5 %/s", "flat out"):
        for mode in ("plain", "enc", "enc+zstd"):
            for cow in ("no", "yes"):
                # frozen, its spread, wall, its spread, copied, writes, then the stalls (nan at rest)
                stalls = r"nan +nan" if label == "at rest" else rf"{num} +{num}-{num}!? +{num} +{num}-{num}!?"
                row = (rf"^  {re.escape(label)} +{re.escape(mode)} +{cow} +{num} +{num}-{num}!? +{num} "
                       rf"+{num}-{num}!? +{num} +{num} +{stalls}$")
                assert re.search(row, out, re.M), f"no {label} {mode} {cow} row"
                assert re.search(rf"^\| {MIB} \| {re.escape(label)} \| {re.escape(mode)} \| {cow} \| {num} \|",
                                 out, re.M), f"no {label} {mode} {cow} summary row"
    for label in ("at rest", "5 %/s", "flat out"):
        assert re.search(rf"enc\+zstd, cow, {re.escape(label)}: frozen {num} ms, target at most 50 ms "
                         rf"\(for 1024 MiB\): (met|NOT met)", out), f"no {label} verdict"
    assert re.search(rf"5 %/s: .*median stall {num} us, target under 1 ms: .*worst stall {num} ms, "
                     rf"target under 50 ms", out)

    js = json.loads((tmp_path / "bench.json").read_text())
    res = [e for e in js if e.get("workload") == "snapshot"]
    assert len(res) == 1 and res[0]["mib"] == MIB and len(res[0]["rows"]) == 18, res
    rows = {(row["case"], row["mode"], row["cow"]): row for row in res[0]["rows"]}
    for (case, mode, cow), row in rows.items():
        assert row["frozen"] > 0 and row["wall"] >= row["frozen"], row
        if case == "rest":
            assert row["writes"] == 0, row
        else:
            # the writers wrote during the dump, and their stalls were measured
            assert row["writes"] > 0 and row["worst"] > 0 and row["median"] > 0, row
            assert row["worst"] >= row["median"], row
        if not cow:
            assert row["copied"] == 0, row
    # Writers flat out write pages criu has not saved yet: some were copied at a fault.
    assert all(rows["flat", m, True]["copied"] > 0 for m in ("plain", "enc", "zstd")), rows
    assert not cowsweeps(tmp_path), "the bench left a workload running"
    ids = [e for e in js if "chain_keys_dropped" in e][0]["chain_keys_dropped"]
    # enc and enc+zstd, three cases, with and without --cow-dump: twelve encrypted dumps (and as
    # many pre-dumps in a chain), whose chain keys the bench removed (only those: other work on
    # the machine may add its own meanwhile)
    assert len(ids) == (24 if chain else 12), ids
    assert not {f"criusec:{i}" for i in ids} & set(chain_keys().values()), "the bench left its chain keys"
