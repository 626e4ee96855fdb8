"""Pre-dump chains: criu pre-dump --track-mem, a second pre-dump on top of
it, then criu dump --track-mem --prev-images-dir, of a process that keeps
rewriting an eighth of its memory.  The later dumps must take the pages
that did not change from their parent (stats-dump), and restore must bring
back every byte (the workload knows what each page must hold).

Encrypted, the dumping host signs its checkpoints but is not a recipient
(they are for a target host and an escrow key): each dump reads its parent
with the chain key the earlier one left in root's keyring.  The same
through a page server, with --auto-dedup, restored lazily; the canary is in
no file of any checkpoint of the chain; a parent swapped, damaged or
removed is refused before any task runs.

Chains need memory tracking: soft-dirty bits (CONFIG_MEM_SOFT_DIRTY), or,
where the kernel lacks them (this machine's, arm64, many cloud kernels),
userfaultfd write-protect with PAGEMAP_SCAN (criu --mem-tracker,
Documentation/mem-tracking.md).  They run here with the second and in the
VM layer (make test-vm, Debian 12's own kernel) with the first, and skip,
saying so, where the kernel has neither.
"""
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import chainkeys
from chainkeys import chain_keys
from helpers import CRIU, REPO, churn_generation, wait_gone, wait_rewritten

SRC = REPO / "build" / "src"
sys.path.insert(0, str(SRC / "lib"))
import pycriu  # noqa: E402

MIB = 256
HUGE = 512  # 4 KiB pages in a 2 MiB huge page
# The kinds of chain: encrypted or not, and how the pages travel and come back.
CHAINS = {
    "plain": {},
    "encrypted": {"encrypt": True},
    "encrypted-page-server": {"encrypt": True, "page_server": True},
    "encrypted-auto-dedup": {"encrypt": True, "dedup": True},
    "encrypted-lazy": {"encrypt": True, "lazy": True},
}
SRC_PKI = SRC / "test" / "pki"
TLS = ["--tls", "--tls-no-cn-verify", "--tls-cacert", str(SRC_PKI / "cacert.pem"), "--tls-cert",
       str(SRC_PKI / "cert.pem"), "--tls-key", str(SRC_PKI / "key.pem")]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The dumping host (it signs), the target host and an escrow key (the recipients)."""
    d = tmp_path_factory.mktemp("chain-keys")
    out = {}
    for n in ("host", "target", "escrow"):
        subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(d), n], check=True, capture_output=True)
        out[n] = (str(d / f"{n}-cert.pem"), str(d / f"{n}-key.pem"))
    return out


def dump_opts(hosts):
    """No key of the dumping host is a recipient: it reads its parents from the keyring."""
    return ["--encrypt", "--tls-cert", hosts["target"][0], "--tls-cert", hosts["escrow"][0],
            "--sign-key", hosts["host"][1], "--sign-cert", hosts["host"][0]]


def restore_opts(hosts):
    return ["--tls-key", hosts["target"][1], "--trust", hosts["host"][0]]


# The chain keys criu leaves in root's user keyring: removed when the tests are done.
@pytest.fixture(autouse=True)
def images_freed(tmp_path):
    """Chains are large and the VM's /tmp is a tmpfs: after each test only
    the logs stay (pytest keeps every test's directory until the session ends)."""
    yield
    for p in sorted(tmp_path.rglob("*"), reverse=True):
        if p.is_symlink() or (p.is_file() and not p.name.endswith(".log")):
            p.unlink()


@pytest.fixture(autouse=True)
def own_chain_keys():
    before = set(chain_keys())
    yield
    for serial in set(chain_keys()) - before:
        chainkeys.unlink(serial)


def ckpt_id(img, hosts):
    from pycriu import criusec
    return criusec.Checkpoint(img, keys=hosts["target"][1]).ckpt_id.hex()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                              f"or userfaultfd write-protect with PAGEMAP_SCAN): {why}")(f)


def needs_no_tracking(f):
    ok, _ = tracking()
    return pytest.mark.skipif(ok, reason="this kernel has memory tracking: what happens without "
                              "it is tested where it is missing (make test)")(f)


def dump_stats(imgdir):
    with open(imgdir / "stats-dump", "rb") as f:
        return pycriu.images.load(f)["entries"][0]["dump"]


def chain_dump(criu, wl, tmp_path, action, name, args, how, hosts):
    """One dump of the chain, through a page server sharing its directory if asked (as ZDTM does)."""
    img = tmp_path / name
    img.mkdir()
    args = list(args) + (dump_opts(hosts) if how.get("encrypt") else [])
    if how.get("dedup"):
        args.append("--auto-dedup")
    server = None
    if how.get("page_server"):
        port = str(free_port())
        server = subprocess.Popen([CRIU, "page-server", "-D", str(img), "-o", "page-server.log", "-v4",
                                   "--address", "127.0.0.1", "--port", port, *TLS], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        deadline = time.monotonic() + 30
        while f":{int(port):04X}" not in open("/proc/net/tcp").read():
            assert server.poll() is None and time.monotonic() < deadline, "the page server did not start"
            time.sleep(0.05)
        args += ["--page-server", "--address", "127.0.0.1", "--port", port, *TLS]
    try:
        if action == "dump":
            criu.dump(wl, img, *args)
        else:
            criu.run(action, img, *args)
        if server:
            assert server.wait(timeout=120) == 0, (img / "page-server.log").read_text()[-3000:]
    finally:
        if server and server.poll() is None:
            server.kill()
    return img


def make_chain(workloads, criu, tmp_path, how, hosts, canary=None, before_dump=None):
    """pre1 <- pre2 <- img of the churn workload; the stats of each.
    before_dump(wl) runs before the last dump (which ends the task)."""
    wl = workloads("churn", MIB, env={"CANARY": canary} if canary else None)
    pages, hot = map(int, wl.last.split()[-2:])
    cold = pages - hot

    pre1 = chain_dump(criu, wl, tmp_path, "pre-dump", "pre1", ["-t", wl.pid, "--track-mem"], how, hosts)
    s = dump_stats(pre1)
    print(f"pre1: {s['pages_written']} pages written, {s['pages_skipped_parent']} from the parent")
    assert s["pages_written"] >= pages and s["pages_skipped_parent"] == 0, s

    # Each later dump rewrites the churned eighth (and a few pages of stack
    # and libraries) and takes every other page from its parent.
    for prev, name in (("pre1", "pre2"), ("pre2", "img")):
        wait_rewritten(wl)
        if name == "img" and before_dump:
            before_dump(wl)
        args = ["-t", wl.pid, "--track-mem", "--prev-images-dir", f"../{prev}"]
        img = chain_dump(criu, wl, tmp_path, "dump" if name == "img" else "pre-dump", name, args, how, hosts)
        s = dump_stats(img)
        print(f"{name}: {s['pages_written']} pages written, {s['pages_skipped_parent']} from the parent")
        # Where a transparent huge page spans the end of the churned eighth,
        # its dirty bit covers all of it: up to HUGE pages more rewritten.
        assert s["pages_skipped_parent"] >= cold - HUGE, (name, s)
        assert hot <= s["pages_written"] <= hot + HUGE + 1024, (name, s)
        assert os.readlink(img / "parent") == f"../{prev}"
    return wl


def lazy_restore(criu, img, extra):
    daemon = subprocess.Popen([CRIU, "lazy-pages", "-D", str(img), "-o", "lazy-pages.log", "-v4", *extra],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (img / "lazy-pages.socket").exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "the lazy-pages daemon did not start"
            time.sleep(0.05)
        criu.restore(img, "--lazy-pages", *extra)
        return daemon
    except BaseException:
        daemon.kill()
        raise


@needs_tracking
@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_pre_dump_chain(workloads, criu, tmp_path, kind, hosts):
    how = CHAINS[kind]
    canary = "CANARY-" + os.urandom(8).hex()
    wl = make_chain(workloads, criu, tmp_path, how, hosts, canary)
    chain = [tmp_path / n for n in ("pre1", "pre2", "img")]
    if how.get("encrypt"):
        for d in chain:
            hits = [p.name for p in d.iterdir() if p.is_file() and canary.encode() in p.read_bytes()]
            assert hits == [], f"the canary is in {d.name}: {hits}"
            assert (d / "cipher.img").exists()
        rargs = restore_opts(hosts)
    else:
        assert any(canary.encode() in p.read_bytes() for p in chain[0].iterdir() if p.is_file()), \
            "no canary in the plain pre-dump: the scan proves nothing"
        rargs = []

    daemon = lazy_restore(criu, tmp_path / "img", rargs) if how.get("lazy") else None
    if not daemon:
        criu.restore(tmp_path / "img", *rargs)
    gen = churn_generation(wl)  # every byte as dumped, whichever dump holds it
    wait_rewritten(wl)    # and it carries on
    assert churn_generation(wl) > gen
    if daemon:
        assert daemon.wait(timeout=120) == 0, (tmp_path / "img" / "lazy-pages.log").read_text()[-3000:]


def refused(criu, img, pid, args, expect):
    before = {p: p.stat().st_mtime_ns for d in (img, img.parent) for p in d.rglob("*") if p.is_file()}
    r = criu.restore(img, *args, check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, f"restored a chain that must be refused:\n{log[-3000:]}"
    assert expect in log, f"no {expect!r} in:\n{log[-3000:]}"
    # The refusal may come from the restored task's own criu process, which is still exiting.
    wait_gone([pid], 10)
    assert not os.path.exists(f"/proc/{pid}")
    after = {p: p.stat().st_mtime_ns for p in before if p.exists()}
    changed = [str(p) for p in before if before[p] != after.get(p) and p.name != "restore.log"]
    assert not changed, f"a refused restore changed {changed}"


@needs_tracking
def test_encrypted_chain_tampered(workloads, criu, tmp_path, hosts):
    """A parent swapped for another checkpoint of the process, a parent's page
    flipped, a parent removed: each refused before any task runs; the
    genuine chain restores after."""
    how = CHAINS["encrypted"]
    # Another genuine checkpoint of the same process, dumped before the
    # last one (without --track-mem: the chain's dirty bits stay as they are).
    other = tmp_path / "other"
    wl = make_chain(workloads, criu, tmp_path, how, hosts, before_dump=lambda wl: criu.run(
        "dump", other, "-t", wl.pid, "--leave-running", *dump_opts(hosts)))
    img, pre2 = tmp_path / "img", tmp_path / "pre2"
    args = restore_opts(hosts)

    os.unlink(img / "parent")
    os.symlink("../other", img / "parent")
    refused(criu, img, wl.pid, args, "another checkpoint id")
    os.unlink(img / "parent")
    os.symlink("../pre2", img / "parent")

    # A page the restore needs: pre2's pages were all rewritten by the last
    # dump, pre1's cold seven eighths were not (the middle of its largest
    # pages image is one of them).
    pages = max((tmp_path / "pre1").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    good = pages.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x20
    pages.write_bytes(bytes(bad))
    refused(criu, img, wl.pid, args, "failed authentication")
    pages.write_bytes(good)

    shutil.move(pre2, tmp_path / "away")
    refused(criu, img, wl.pid, args, "")
    shutil.move(tmp_path / "away", pre2)
    assert other.exists()

    criu.restore(img, *args)
    gen = churn_generation(wl)
    wait_rewritten(wl)
    assert churn_generation(wl) > gen


@needs_tracking
def test_snapshot_between_passes_keeps_the_chain_incremental(workloads, criu, tmp_path, hosts):
    """A snapshot of the task between two passes of its chain (dump
    --leave-running without --track-mem: copy-on-write by default, the task
    runs while its pages are written) leaves the chain's marks as they were:
    the next pass still writes the churned eighth and takes the rest from
    its parent (make_chain() checks). Where soft-dirty tracks memory (the
    VM), a huge page unprotected in part would be split, and the kernel
    marks every page of a split dirty huge page soft-dirty: the snapshot
    unprotects huge pages whole, and the next pass would write all of it
    otherwise."""
    snap = tmp_path / "snap"

    def snapshot(wl):
        criu.run("dump", snap, "-t", wl.pid, "--leave-running")

    make_chain(workloads, criu, tmp_path, CHAINS["plain"], hosts, before_dump=snapshot)
    log = (snap / "dump.log").read_text(errors="replace")
    assert re.search(r"cow-dump: \d+ pages written: \d+ copied at a write fault", log), log[-3000:]
    if "soft-dirty" in tracking()[1]:
        assert "pages are unprotected 2048 KiB at a time, huge pages whole" in log, log[-3000:]


@needs_tracking
def test_dump_over_a_truncated_parent_takes_nothing_from_it(workloads, criu, tmp_path, hosts):
    """A dump reads its parents' page images only to punch them, and takes
    their tags only then, but checks their size when it opens them, frozen:
    a parent's page image cut short is refused, saying so, and (as CRIU does
    for a parent it can't open) the dump takes no page from it; the genuine
    parent serves the next dump."""
    wl = workloads("churn", MIB)
    pre = chain_dump(criu, wl, tmp_path, "pre-dump", "pre1", ["-t", wl.pid, "--track-mem"], CHAINS["encrypted"],
                     hosts)
    pages = max(pre.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    good = pages.read_bytes()
    pages.write_bytes(good[:-4096])
    bad = tmp_path / "bad"
    bad.mkdir()
    criu.run("dump", bad, "-t", wl.pid, "--leave-running", "--track-mem", "--prev-images-dir", "../pre1",
             *dump_opts(hosts))
    log = (bad / "dump.log").read_text(errors="replace")
    assert re.search(r"%s: \d+ bytes, but the dump wrote \d+ \(\d+ pages\): truncated or extended" % pages.name,
                     log), log[-3000:]
    s = dump_stats(bad)
    assert s["pages_skipped_parent"] == 0 and s["pages_written"] >= MIB * 256, s
    pages.write_bytes(good)
    again = tmp_path / "again"
    again.mkdir()
    criu.run("dump", again, "-t", wl.pid, "--leave-running", "--track-mem", "--prev-images-dir", "../bad",
             *dump_opts(hosts))
    assert dump_stats(again)["pages_skipped_parent"] > 0


def test_incremental_dump_reads_its_parent_from_the_keyring(workloads, criu, tmp_path, hosts):
    """A dump over a parent reads it (and binds to it) before freezing
    anything: with the chain key the earlier dump left, though no key of
    this host is a recipient; without it, one clear error naming the
    parent, and the task runs on.  (Whole chains need memory tracking: the
    VM layer runs them.  Here the parent is a full dump, which upstream
    CRIU does not take as a parent of a later dump: only the reading of the
    parent is checked.)"""
    wl = workloads("counter")
    criu.run("dump", tmp_path / "a", "-t", wl.pid, "--leave-running", *dump_opts(hosts))
    desc = "criusec:" + ckpt_id(tmp_path / "a", hosts)
    assert desc in chain_keys().values(), "the dump left no chain key"
    assert "is in root's keyring" in (tmp_path / "a" / "dump.log").read_text()

    criu.run("dump", tmp_path / "b", "-t", wl.pid, "--leave-running", "--prev-images-dir", "../a",
             *dump_opts(hosts), check=False)
    log = (tmp_path / "b" / "dump.log").read_text()
    assert f"read with the chain key {desc}" in log and "All " in log, log[-2000:]
    assert "Error (criu/criusec" not in log, log[-2000:]

    for serial, d in chain_keys().items():
        if d == desc:
            chainkeys.unlink(serial)
    r = criu.run("dump", tmp_path / "c", "-t", wl.pid, "--leave-running", "--prev-images-dir", "../a",
                 *dump_opts(hosts), check=False)
    log = (tmp_path / "c" / "dump.log").read_text()
    assert r.returncode != 0 and "can't read its parent checkpoint ../a" in log and "keyring" in log, log[-2000:]
    assert "Freezing" not in log and "Seizing" not in log

    # A key of the target, given to the dump, reads the parent too (the fallback).
    criu.run("dump", tmp_path / "d", "-t", wl.pid, "--leave-running", "--prev-images-dir", "../a",
             *dump_opts(hosts), "--tls-key", hosts["target"][1], check=False)
    assert "cipher.img: unlocked with" in (tmp_path / "d" / "dump.log").read_text()
    before = int(wl.report().split()[1])
    assert int(wl.report().split()[1]) > before, "the task does not run on"


@needs_tracking
def test_pre_dump_chain_shared_memory_canaries(memcanary, criu, tmp_path, hosts):
    """A pre-dump saves shared memory (shared anonymous memory, a memfd,
    SysV shm) for the next pass to compare with.  Plain, each of those
    regions' canaries reaches the pre-dump's page images, so the path is
    taken.  Encrypted and compressed, pre-dump, pre-dump, dump: the
    canaries are in no file of the chain, the later passes take the
    unchanged shared pages from their parent, and restore brings every
    region back."""
    shared = ("shared", "memfd", "sysv")
    wl, canary = memcanary("plain")
    pre = chain_dump(criu, wl, tmp_path, "pre-dump", "plain", ["-t", wl.pid, "--track-mem"], {}, hosts)
    pages = [p.read_bytes() for p in pre.iterdir() if p.name.startswith("pages-")]
    for region in shared:
        assert any(f"{canary}-{region}".encode() in p for p in pages), \
            f"plain pre-dump: no {region} canary in its page images"
    wl.kill()

    wl, canary = memcanary("enc")
    how = {"encrypt": True}
    args = ["-t", wl.pid, "--track-mem", "--compress"]
    chain_dump(criu, wl, tmp_path, "pre-dump", "pre1", args, how, hosts)
    chain_dump(criu, wl, tmp_path, "pre-dump", "pre2", args + ["--prev-images-dir", "../pre1"], how, hosts)
    s = dump_stats(tmp_path / "pre2")
    assert s["shpages_skipped_parent"] >= len(shared) and s["pages_untracked_shmem"] == 0, s
    img = chain_dump(criu, wl, tmp_path, "dump", "img", args + ["--prev-images-dir", "../pre2"], how, hosts)
    s = dump_stats(img)
    assert s["shpages_skipped_parent"] >= len(shared) and s["pages_untracked_shmem"] == 0, s
    for d in ("pre1", "pre2", "img"):
        hits = [p.name for p in (tmp_path / d).iterdir() if p.is_file() and canary.encode() in p.read_bytes()]
        assert hits == [], f"the canary is in {d}: {hits}"
    criu.restore(img, *restore_opts(hosts))
    assert wl.report() == "memcanary OK 0"
