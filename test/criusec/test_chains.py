"""Pre-dump chains: criu pre-dump --track-mem, a second pre-dump on top of
it, then criu dump --track-mem --prev-images-dir, of a process that keeps
rewriting an eighth of its memory.  The later dumps must take the pages
that did not change from their parent (stats-dump), and restore must bring
back every byte (the workload knows what each page must hold).

Chains need memory tracking (soft-dirty bits, CONFIG_MEM_SOFT_DIRTY).  This
machine's kernel has none, so they run in the VM layer (make test-vm, under
Debian 12's own kernel) and skip here, saying so.  Where tracking is
missing, the tests at the end check that criu pre-dump and ZDTM's --pre and
--snaps say so, instead of crashing or passing having run nothing.
"""
import functools
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import CRIU, REPO, wait_gone

SRC = REPO / "build" / "src"
sys.path.insert(0, str(SRC / "lib"))
import pycriu  # noqa: E402

MIB = 256
HUGE = 512  # 4 KiB pages in a 2 MiB huge page
# Extra options of each kind of chain, for every dump of the chain.
CHAINS = {"plain": []}


@functools.cache
def tracking():
    """(True, "") where criu can track memory, else (False, why not)."""
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"],
                       capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip().splitlines()
    return r.returncode == 0, (out or ["failed"])[-1]


def needs_tracking(f):
    ok, why = tracking()
    return pytest.mark.skipif(not ok, reason="pre-dump chains need memory tracking (soft-dirty, "
                              f"CONFIG_MEM_SOFT_DIRTY; make test-vm has it): {why}")(f)


def needs_no_tracking(f):
    ok, _ = tracking()
    return pytest.mark.skipif(ok, reason="this kernel has memory tracking: what happens without "
                              "it is tested where it is missing (make test)")(f)


def dump_stats(imgdir):
    with open(imgdir / "stats-dump", "rb") as f:
        return pycriu.images.load(f)["entries"][0]["dump"]


def generation(wl):
    """Check every byte of the workload's memory; its current generation."""
    r = wl.report()
    m = re.fullmatch(r"churn OK (\d+)", r)
    assert m, r
    return int(m.group(1))


def wait_rewritten(wl):
    """Until the churned eighth has been rewritten whole since the last dump."""
    start = generation(wl)
    deadline = time.monotonic() + 120
    while generation(wl) <= start:
        assert time.monotonic() < deadline, "the workload stopped rewriting its memory"
        time.sleep(0.2)


@needs_tracking
@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_pre_dump_chain(workloads, criu, tmp_path, kind):
    wl = workloads("churn", MIB)
    pages, hot = map(int, wl.last.split()[-2:])
    cold = pages - hot
    opts = CHAINS[kind]

    criu.run("pre-dump", tmp_path / "pre1", "-t", wl.pid, "--track-mem", *opts)
    s = dump_stats(tmp_path / "pre1")
    print(f"pre1: {s['pages_written']} pages written, {s['pages_skipped_parent']} from the parent")
    assert s["pages_written"] >= pages and s["pages_skipped_parent"] == 0, s

    # Each later dump rewrites the churned eighth (and a few pages of stack
    # and libraries) and takes every other page from its parent.
    for prev, name in (("pre1", "pre2"), ("pre2", "img")):
        wait_rewritten(wl)
        args = ["-t", wl.pid, "--track-mem", "--prev-images-dir", f"../{prev}", *opts]
        if name == "img":
            criu.dump(wl, tmp_path / name, *args)
        else:
            criu.run("pre-dump", tmp_path / name, *args)
        s = dump_stats(tmp_path / name)
        print(f"{name}: {s['pages_written']} pages written, {s['pages_skipped_parent']} from the parent")
        # Where a transparent huge page spans the end of the churned eighth,
        # its dirty bit covers all of it: up to HUGE pages more rewritten.
        assert s["pages_skipped_parent"] >= cold - HUGE, (name, s)
        assert hot <= s["pages_written"] <= hot + HUGE + 1024, (name, s)
        assert os.readlink(tmp_path / name / "parent") == f"../{prev}"

    criu.restore(tmp_path / "img")
    gen = generation(wl)  # every byte as dumped, whichever dump holds it
    wait_rewritten(wl)    # and it carries on
    assert generation(wl) > gen


@needs_no_tracking
def test_pre_dump_without_tracking(workloads, criu, tmp_path):
    """criu pre-dump, on the command line and through RPC, refuses with a
    clear error (upstream: BUG at criu/mem.c:46, SIGABRT); the task runs on."""
    wl = workloads("counter")
    r = criu.run("pre-dump", tmp_path / "cli", "-t", wl.pid, check=False)
    log = (tmp_path / "cli" / "pre-dump.log").read_text()
    assert r.returncode == 1, (r.returncode, log[-2000:])
    assert "Pre-dump needs memory tracking, which this kernel does not have" in log
    assert "BUG" not in log

    rpc = tmp_path / "rpc"
    rpc.mkdir()
    c = pycriu.criu()
    c.use_binary(CRIU)
    c.opts.images_dir_fd = os.open(rpc, os.O_DIRECTORY)
    c.opts.pid = wl.pid
    c.opts.log_file = "pre-dump.log"
    c.opts.log_level = 4
    try:
        with pytest.raises(pycriu.CRIUExceptionExternal):
            c.pre_dump()
    finally:
        os.close(c.opts.images_dir_fd)
    assert "Pre-dump needs memory tracking" in (rpc / "pre-dump.log").read_text()

    before = int(wl.report().split()[1])
    assert int(wl.report().split()[1]) > before, "the task does not run on"


@needs_no_tracking
@pytest.mark.parametrize("mode", [["--pre", "2"], ["--pre", "2", "--snaps"]], ids=["pre", "snaps"])
def test_zdtm_chain_modes_without_tracking(tmp_path, mode):
    """ZDTM's --pre and --snaps report each test skipped, with the reason,
    instead of exiting 0 having run (and reported) nothing."""
    tests = ["zdtm/static/env00", "zdtm/transition/fork"]
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ["PATH"])
    # zdtm.py builds every test when it finds no libzdtmtst.a: it needs none here.
    subprocess.run(["make", "-s", "-C", "zdtm/lib"], cwd=SRC / "test", env=env, check=True,
                   capture_output=True, timeout=600)
    r = subprocess.run(["/usr/bin/python3", "zdtm.py", "run", *mode, "-f", "uns", "--keep-going",
                        "--report", str(tmp_path), *[a for t in tests for a in ("-t", t)]],
                       cwd=SRC / "test", env=env, capture_output=True, text=True, timeout=300)
    assert "Tracking memory is not available" in r.stdout, r.stdout[-2000:]
    taps = list(tmp_path.glob("criu-testreport*.tap"))
    assert len(taps) == 1, (r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in taps[0].read_text().splitlines() if re.match(r"(not )?ok ", ln)]
    assert lines == [f"ok {i} - {t} # SKIP no memory tracking (mem_dirty_track) for --pre/--snaps"
                     for i, t in enumerate(tests, 1)]
