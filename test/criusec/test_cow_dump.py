"""Copy-on-write dump (issue 21): `criu dump --leave-running --cow-dump`
lets the tasks run while their pages are written; a write to a page not
yet saved waits until criu has saved it.

The workload (workloads/cowsweep.c) has threads sweeping a region flat
out, stamping each page with a generation after checking it holds the
previous one: the image must show, in each thread's slice, exactly one
sweep boundary, and the restored process goes on checking every page it
stamps.  criu SIGKILLed while it writes must leave no thread blocked and
no plaintext behind; shared memory is dumped while the tree is frozen.

Needs root and a kernel with userfaultfd write-protect (each test skips,
saying so, without)."""
import os
import random
import re
import signal
import struct
import subprocess
import time

import pytest

from helpers import (CRIU, CRIU_TIMEOUT, Workload, build_workload, criusec, files_with, merged, pid_alive, pycriu,
                     reap_all, start_page_server, tls_opts, tree_pids, wait_gone)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="criu dump and restore need root")

PAGE = 4096
THREADS = 2

MODES = {
    "plain": (),
    "encrypt": ("--encrypt",),
    "encrypt-compress": ("--encrypt", "--compress"),
}


@pytest.fixture(scope="module")
def cowsweep_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "cowsweep", "-pthread")


@pytest.fixture
def sweeper(cowsweep_bin, tmp_path):
    started = []

    def start(mib, mode="cowsweep", canary=None, env=None, permille=None):
        env = dict(env or {}, **({"CANARY": canary} if canary else {}))
        args = (mib, THREADS) + ((permille,) if permille else ())
        wl = Workload(cowsweep_bin, mode, tmp_path, args, env)
        started.append(wl)
        addr, npages = wl.last.split()[2:4]  # "#0 ready ADDR NPAGES THREADS"
        wl.addr, wl.npages = int(addr, 16), int(npages)
        return wl

    yield start
    for wl in started:
        wl.kill()


def counts(wl):
    """(max stall in us, [pages stamped by each thread]); fails on a BAD report."""
    r = wl.report()
    assert r.startswith("cowsweep OK"), r
    v = [int(x) for x in r.split("|")[0].split()[2:]]
    return v[0], v[1:]


def advancing(wl, at_least):
    """Every thread stamps at least `at_least` more pages, each checked."""
    _, before = counts(wl)
    deadline = time.monotonic() + 60
    while True:
        _, now = counts(wl)
        if all(n - b >= at_least for n, b in zip(now, before)):
            return now
        assert time.monotonic() < deadline, f"threads stuck: {before} -> {now}"
        time.sleep(0.1)


def criu(action, img, *args, check=True):
    img.mkdir(parents=True, exist_ok=True)
    cmd = [CRIU, action, "-D", str(img), "-o", f"{action}.log", "-v4", *map(str, args)]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CRIU_TIMEOUT)
    r.log = (img / f"{action}.log").read_text(errors="replace")
    if check and r.returncode:
        raise AssertionError(f"criu {action} failed ({r.returncode}): {r.stderr}\n{r.log[-4000:]}")
    return r


def cow_dump(wl, img, *args):
    # Its status file as dumped: restore checks the size of an open file
    wl.dumped_status = wl.read_status()
    r = criu("dump", img, "-t", wl.pid, "--leave-running", "--cow-dump", *args, check=False)
    if "no userfaultfd write-protect" in r.log:
        pytest.skip("this kernel has no userfaultfd write-protect (with its events)")
    assert r.returncode == 0, f"{r.stderr}\n{r.log[-4000:]}"
    return r


def enc_args(keys, mode):
    args = MODES[mode]
    return (*args, "--tls-cert", keys["alice"][0]) if args else ()


def stamps(img, wl, key):
    """(generation, page index) at the head of each page of the region, as dumped."""
    ck = criusec.Checkpoint(img, keys=key) if key else criusec.Checkpoint(img)
    got = dict(ck.pages("pagemap-%d.img" % wl.pid, wl.addr, wl.addr + wl.npages * PAGE))
    assert len(got) == wl.npages, f"{wl.npages - len(got)} pages of the region are not in the image"
    return [struct.unpack_from("<QQ", got[wl.addr + p * PAGE]) for p in range(wl.npages)]


def one_boundary(st, npages):
    """Each thread's slice: generation g up to its position, g - 1 after."""
    for t in range(THREADS):
        first, last = npages * t // THREADS, npages * (t + 1) // THREADS
        gens = [st[p][0] for p in range(first, last)]
        assert all(st[p][1] == p for p in range(first, last)), "a page stamped with another index"
        boundaries = [p for p in range(1, len(gens)) if gens[p] != gens[p - 1]]
        assert len(boundaries) <= 1, f"thread {t}: {len(boundaries)} sweep boundaries in the image"
        if boundaries:
            b = boundaries[0]
            assert gens[b - 1] == gens[b] + 1, f"thread {t}: generations {gens[b - 1]} then {gens[b]}"


def status_at_freeze(img, wl, before):
    """The workload's status file as the dump saw it (restore checks the size
    of an open file): before, or what it is now, which files.img tells; or,
    frozen while the workload rewrote it (truncated, not yet written), the
    start of it."""
    after = wl.read_status()
    size = [f["reg"]["size"] for f in pycriu.images.load(open(img / "files.img", "rb"))["entries"]
            if f.get("reg", {}).get("name", "").endswith("/" + wl.status_path.name)][0]
    for st in (before, after):
        if len(st.encode()) == size:
            return st
    return after.encode()[:size].decode()


def restore_and_check(img, wl, key):
    pids = tree_pids(wl.pid)
    wl.kill()
    wait_gone(pids)
    wl.status_path.write_text(wl.dumped_status)
    criu("restore", img, "-d", *(("--tls-key", key) if key else ()))
    # The restored threads check each page before they stamp it
    advancing(wl, wl.npages // THREADS * 2)


def dump_stats(img):
    with open(img / "stats-dump", "rb") as f:
        return pycriu.images.load(f)["entries"][0]["dump"]


# mem-track's line for a VMA given up before a snapshot's freeze (nearly all written)
GIVEN_UP = r"VMA (([0-9a-f]+)-[0-9a-f]+): (\d+) of its (\d+) pages written since the last pass: given up, not lent"


def given_up_vmas(log):
    """The VMAs tracking gave up, as "start-end"."""
    return {m[1] for m in re.finditer(GIVEN_UP, log)}


def in_full(log, parent_log=""):
    """The log's lines about memory dumped in full, but those about VMAs
    tracking gave up (in this pass, or in parent_log's, whose next pass
    dumps them in full as untracked)."""
    gone = given_up_vmas(parent_log)
    lines = []
    for line in log.splitlines():
        if "given up" in line:
            continue
        m = re.search(r"([0-9a-f]+-[0-9a-f]+) is new, changed or given up since the last pass", line)
        if m and m[1] in gone or gone and re.search(r"\d+ VMAs not tracked since the last pass are dumped in full", line):
            continue
        if "dumped in full" in line or m:
            lines.append(line)
    return lines


def final_dump(wl, fin, parent, *args):
    """A chain's last pass, over ../PARENT (the task killed after it): none
    of its memory dumped in full but what tracking gave up in the parent's
    pass; the run, with its stats-dump as .stats."""
    wl.dumped_status = wl.read_status()
    r = criu("dump", fin, "-t", wl.pid, "--track-mem", "--prev-images-dir", "../" + parent, *args)
    parent_log = "".join(f.read_text(errors="replace") for f in (fin.parent / parent).glob("*dump.log"))
    assert "every page is dumped" not in r.log, r.log[-3000:]
    assert not in_full(r.log, parent_log), (in_full(r.log, parent_log), r.log[-3000:])
    r.stats = dump_stats(fin)
    return r


def restore_final(fin, wl, key, at_least):
    """Restore final_dump()'s images; the restored threads check the pages they stamp."""
    wait_gone(tree_pids(wl.pid))
    wl.status_path.write_text(wl.dumped_status)
    criu("restore", fin, "-d", *(("--tls-key", key) if key else ()))
    advancing(wl, at_least)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_cow_dump_is_the_memory_at_the_freeze(sweeper, keys, tmp_path, mode):
    canary = "CANARY-cow-" + os.urandom(8).hex()
    wl = sweeper(256, canary=canary)
    advancing(wl, 1000)
    img = tmp_path / "img"
    r = cow_dump(wl, img, *enc_args(keys, mode))

    assert "Writing the pages of the running tasks" in r.log
    m = re.search(r"(\d+) pages written: (\d+) copied at a write fault, (\d+) copied while frozen", r.log)
    assert m, r.log[-2000:]
    print(m.group(0))
    # The writers ran while criu wrote, and waited for their pages
    assert int(m.group(2)) > 0
    # stats-dump counts them as the log does
    st = dump_stats(img)
    assert (st["pages_cow_fault"], st["pages_cow_frozen"]) == (int(m.group(2)), int(m.group(3)))
    advancing(wl, 1000)

    key = keys["alice"][1] if MODES[mode] else None
    # Pages written while the tasks run, copied at a fault or not: none in clear when encrypted
    found = files_with(img, canary.encode())
    if key:
        assert found == [], found
    else:
        assert found, "the plain images should hold the canary (else this check finds nothing)"
    one_boundary(stamps(img, wl, key), wl.npages)
    restore_and_check(img, wl, key)


@pytest.mark.parametrize("mode", ["plain", "encrypt-compress"])
def test_cow_dump_through_a_page_server(sweeper, keys, tmp_path, mode):
    """The pages written while the tasks run go to a page server (over TLS
    when encrypted): the server holds exactly the memory at the freeze, and
    the dump dir no page; merged, they restore."""
    canary = "CANARY-cow-ps-" + os.urandom(8).hex()
    wl = sweeper(128, canary=canary)
    advancing(wl, 1000)
    base = tmp_path / "ps"
    srv, dump = base / "srv", base / "dump"
    srv.mkdir(parents=True)
    tls = tls_opts(keys) if MODES[mode] else []
    server, port = start_page_server(srv, tmp_path, *tls)
    try:
        r = cow_dump(wl, dump, "--page-server", "--address", "127.0.0.1", "--port", port, *tls,
                     *enc_args(keys, mode))
        assert server.wait(timeout=60) == 0, (srv / "page-server.log").read_text()[-3000:]
    finally:
        server.kill()
        server.wait()
    assert "Writing the pages of the running tasks" in r.log
    m = re.search(r"(\d+) pages written: (\d+) copied at a write fault", r.log)
    assert m and int(m.group(2)) > 0, r.log[-2000:]
    assert not list(dump.glob("pages-*.img")), "pages written to the dump dir, not to the page server"
    assert list(srv.glob("pages-*.img"))
    advancing(wl, 1000)

    key = keys["alice"][1] if MODES[mode] else None
    found = files_with(srv, canary.encode()) + files_with(dump, canary.encode())
    assert bool(found) == (key is None), found
    img = merged(base, srv, dump)
    one_boundary(stamps(img, wl, key), wl.npages)
    restore_and_check(img, wl, key)


def cow_dump_started(wl, img, *args):
    """A criu dump --cow-dump in the background, once it writes the pages of the running tasks."""
    img.mkdir(exist_ok=True)
    log = img / "dump.log"
    p = subprocess.Popen([CRIU, "dump", "-D", str(img), "-o", "dump.log", "-v4", "-t", str(wl.pid), "--leave-running",
                          "--cow-dump", *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + CRIU_TIMEOUT
    while "Writing the pages of the running tasks" not in (log.read_text(errors="replace") if log.exists() else ""):
        if p.poll() is not None:
            text = log.read_text(errors="replace")
            if "no userfaultfd write-protect" in text:
                pytest.skip("this kernel has no userfaultfd write-protect (with its events)")
            raise AssertionError("criu ended before its copy-on-write phase:\n" + text[-3000:])
        if time.monotonic() > deadline:
            p.kill()
            raise AssertionError("criu never reached its copy-on-write phase")
        time.sleep(0.005)
    return p


def dump_while_dropping(wl, img, *args):
    """A copy-on-write dump during which the workload (DROP=...) drops its
    sweep region, once criu writes the pages: the finished criu process."""
    p = cow_dump_started(wl, img, *args)
    try:
        os.kill(wl.pid, signal.SIGUSR2)
        wl.wait_status(lambda s: "dropped" in s, "dropped")
        p.wait(timeout=CRIU_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p


def blocked_threads(pid):
    """Threads of pid waiting on a userfaultfd."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                if f.read().strip() == "handle_userfault":
                    out.append(tid)
        except OSError:
            pass
    return out


def test_cow_dump_criu_killed_leaves_no_writer_blocked(sweeper, keys, tmp_path):
    canary = "CANARY-cow-" + os.urandom(8).hex()
    wl = sweeper(1024, canary=canary)
    advancing(wl, 1000)
    img = tmp_path / "img"
    p = cow_dump_started(wl, img, *enc_args(keys, "encrypt-compress"))
    try:
        # Killed while a writer waits for it
        deadline = time.monotonic() + 30
        while not blocked_threads(wl.pid):
            assert p.poll() is None, "criu finished before a writer waited for it: make the region bigger"
            assert time.monotonic() < deadline, "no writer ever waited for criu"
            time.sleep(0.001)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reap_all()

    assert pid_alive(wl.pid)
    # Every thread goes on: none waits on a fault nobody serves
    advancing(wl, wl.npages // THREADS)
    assert files_with(img, canary.encode()) == []


def test_cow_dump_shared_memory_is_dumped_frozen(sweeper, tmp_path):
    wl = sweeper(64, mode="cowsweep-shared")
    advancing(wl, 1000)
    img = tmp_path / "img"
    r = cow_dump(wl, img)
    assert re.search(r"VMA %x-[0-9a-f]+ is .*shared memory: dumped while the tree is frozen" % wl.addr, r.log)
    advancing(wl, 1000)
    restore_and_check(img, wl, None)


def test_cow_dump_memory_registered_by_another_userfaultfd(sweeper, tmp_path):
    """A pre-dump leaves the task's memory registered with the userfaultfd
    its holder keeps (memory tracking, Documentation/mem-tracking.md), as a
    task's own userfaultfd would (criu can't dump a task holding one): the
    copy-on-write dump can't register it (EBUSY) and copies those pages
    while the task is frozen, saying why; the image is still exact."""
    wl = sweeper(64)
    advancing(wl, 1000)
    r = criu("pre-dump", tmp_path / "pre", "-t", wl.pid, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    advancing(wl, 1000)
    img = tmp_path / "img"
    r = cow_dump(wl, img)
    assert re.search(r"VMA %x-[0-9a-f]+ copied while frozen: registered with another userfaultfd" % wl.addr, r.log)
    one_boundary(stamps(img, wl, None), wl.npages)
    advancing(wl, 1000)


def pre_dumped(sweeper, keys, tmp_path, crypt, canary, **kw):
    """A sweeper stamping `canary`, pre-dumped into pre/ in MODES[crypt] (skips where
    pre-dump can't work): (workload, those criu arguments, the key to read its images)."""
    wl = sweeper(256, canary=canary, **kw)
    advancing(wl, 500)
    args = enc_args(keys, crypt)
    key = keys["alice"][1] if MODES[crypt] else None
    r = criu("pre-dump", tmp_path / "pre", "-t", wl.pid, *args, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    return wl, args, key


def canary_only_in_plain(canary, key, dirs, snapshot):
    """Encrypted, the canary is in no file of the chain; plain, the snapshot
    holds it (else the check finds nothing)."""
    for d in dirs:
        found = files_with(d, canary.encode())
        if key:
            assert found == [], (d.name, found)
        elif d == snapshot:
            assert found, "the plain snapshot should hold the canary (else this check finds nothing)"


def given_up(wl, log):
    """The sweep region's "given up" line: (pages written since the last pass, of how many)."""
    m = next((m for m in re.finditer(GIVEN_UP, log) if int(m[2], 16) == wl.addr), None)
    return (int(m[3]), int(m[4])) if m else None


@pytest.mark.parametrize("mode", ["plain", "encrypt-compress"])
def test_cow_dump_in_a_chain(sweeper, keys, tmp_path, mode):
    """A snapshot in a chain (issue 20's tracking, issue 21's snapshot):
    pre-dump, then dump --leave-running --track-mem --prev-images-dir
    --cow-dump, then a final dump over it.  Pages unchanged since the
    pre-dump are parent holes.  The threads rewrite all their region flat
    out, so by the snapshot all of it is written since the pre-dump:
    tracking gives it up before the freeze instead of lending it (a lend
    costs two walks of its page tables and a second stop), the snapshot
    dumps it in full, protected like new memory (nothing of it copied
    while frozen), and does not hand it back.  The task's other tracked
    VMAs are lent and taken back, or copied.  The snapshot is exactly the
    memory at its freeze; the final dump over it dumps the region in full
    and takes the rest from the snapshot, and restores.  Encrypted, the
    canary in every page is in no file of the chain."""
    canary = "CANARY-cow-chain-" + os.urandom(8).hex()
    wl, args, key = pre_dumped(sweeper, keys, tmp_path, mode, canary)
    advancing(wl, wl.npages // THREADS + 1000)  # every page written since the pre-dump
    img = tmp_path / "img"
    r = cow_dump(wl, img, "--track-mem", "--prev-images-dir", "../pre", *args)
    assert "Writing the pages of the running tasks" in r.log
    gu = given_up(wl, r.log)
    assert gu and gu[0] * 8 >= gu[1] * 7, r.log[-3000:]
    assert re.search(r"%d: [1-9]\d* VMAs given up before the freeze stay untracked" % wl.pid, r.log), r.log[-3000:]
    assert not re.search(r"VMA %x-[0-9a-f]+ (lent by|back to) memory tracking" % wl.addr, r.log), r.log[-3000:]
    assert not re.search(r"VMA %x-[0-9a-f]+:? .*copied while frozen" % wl.addr, r.log), r.log[-3000:]
    # The other VMAs tracking lent come back to it
    lent = len(re.findall(r"VMA [0-9a-f]+-[0-9a-f]+ lent by memory tracking", r.log))
    back = re.search(r"%d: (\d+) VMAs back to memory tracking" % wl.pid, r.log)
    assert not lent or (back and int(back[1]) >= lent), r.log[-3000:]
    assert "every page is dumped" not in r.log, r.log[-3000:]
    st = dump_stats(img)
    assert st["pages_untracked_vma"] >= wl.npages and st["pages_skipped_parent"] > 0, st
    # The sweep region's pages were protected, none copied while frozen: the
    # copies are the other tracked VMAs' (under a third of a thread's stack
    # written, say) and a few pages criu can't protect
    others = sum(int(n) for n in re.findall(r"VMA [0-9a-f-]+: (\d+) pages written since the last pass: copied", r.log))
    assert st.get("pages_cow_frozen", 0) < wl.npages // 100 + others, (st, others)
    one_boundary(stamps(img, wl, key), wl.npages)
    advancing(wl, 1000)

    fin = tmp_path / "fin"
    r = final_dump(wl, fin, "img", *args)
    assert re.search(r"%x-[0-9a-f]+ is new, changed or given up since the last pass" % wl.addr, r.log), r.log[-3000:]
    assert r.stats["pages_untracked_vma"] >= wl.npages and r.stats["pages_skipped_parent"] > 0, r.stats
    one_boundary(stamps(fin, wl, key), wl.npages)
    restore_final(fin, wl, key, wl.npages // THREADS * 2)
    canary_only_in_plain(canary, key, (tmp_path / "pre", img, fin), img)


@pytest.mark.parametrize("mode", ["plain", "encrypt-compress"])
def test_cow_dump_in_a_chain_copies_a_small_share_while_frozen(sweeper, keys, tmp_path, mode):
    """A tracked VMA with under a third of it to dump is not lent: its
    pages written since the last pass are copied while the task is frozen
    (two threads from 4,096 pages, into one mapping populated before the
    freeze, read 256 at a time across runs).  The threads stamp 4 % of their pages a second,
    about 6 % of them since the pre-dump: the snapshot says it copied them,
    is exactly the memory at its freeze, and a final dump over it
    restores.  Encrypted, the canary in every page is in no file."""
    canary = "CANARY-cow-small-" + os.urandom(8).hex()
    wl, args, key = pre_dumped(sweeper, keys, tmp_path, mode, canary, mode="cowsweep-paced", permille=40)
    advancing(wl, wl.npages // THREADS // 16)
    img = tmp_path / "img"
    r = cow_dump(wl, img, "--track-mem", "--prev-images-dir", "../pre", *args)
    copied = re.search(r"VMA %x-[0-9a-f]+: (\d+) pages written since the last pass: copied while frozen" % wl.addr,
                       r.log)
    assert copied and 0 < int(copied[1]) < wl.npages // 8, r.log[-3000:]
    assert not re.search(r"VMA %x-[0-9a-f]+ lent by memory tracking" % wl.addr, r.log), r.log[-3000:]
    # The pool the copy reads into was counted and populated before the
    # freeze, with room for a quarter more than was written then: used if
    # big enough, else the log says so and the copy has a pool of its own.
    reserved = re.search(r"%d: (\d+) pages populated before the freeze" % wl.pid, r.log)
    assert reserved and int(reserved[1]) >= 1024, r.log[-3000:]
    used = re.search(r"%d: (\d+) pages to copy while frozen,( into)? (\d+) populated before the freeze"
                     r"(: a pool of their own)?" % wl.pid, r.log)
    assert used and int(used[3]) == int(reserved[1]) and int(used[1]) >= int(copied[1]), r.log[-3000:]
    assert bool(used[4]) == (int(used[1]) > int(used[3])) != bool(used[2]), used[0]
    st = dump_stats(img)
    # Each copied once, while frozen or at a fault (a page written meanwhile is saved at its fault first)
    assert st["pages_cow_frozen"] + st["pages_cow_fault"] >= int(copied[1]), (st, copied[1])
    assert st["pages_skipped_parent"] > wl.npages // 2, st
    one_boundary(stamps(img, wl, key), wl.npages)
    advancing(wl, 500)

    fin = tmp_path / "fin"
    final_dump(wl, fin, "img", *args)
    one_boundary(stamps(fin, wl, key), wl.npages)
    restore_final(fin, wl, key, 500)
    canary_only_in_plain(canary, key, (tmp_path / "pre", img, fin), img)


@pytest.mark.parametrize("mode", ["plain", "encrypt-compress"])
def test_final_dump_over_page_cache_warmed_before_the_freeze(sweeper, keys, tmp_path, mode):
    """A chain's final dump keeps the task frozen while it writes, so before
    the freeze it writes as much page cache as tracking saw pages written
    since the pre-dump, and a quarter more, and its pages image is that file
    written over (image.c, img_prewarm_pages()).  The log says so; the image
    is cut to what was written (plain: exactly its pages; encrypted, restore
    checks the size); encrypted, the canary in every page is in no file of
    the chain; the dump restores with every page checked."""
    chk = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True).stdout
    if "Memory tracking: uffd" not in chk:
        pytest.skip("the page cache is written before the freeze only in a userfaultfd chain, which counts "
                    "the pages to write then: " + chk.strip())
    canary = "CANARY-warm-" + os.urandom(8).hex()
    wl, args, key = pre_dumped(sweeper, keys, tmp_path, mode, canary, mode="cowsweep-paced", permille=40)
    advancing(wl, wl.npages // THREADS // 16)
    fin = tmp_path / "fin"
    r = final_dump(wl, fin, "pre", *args)
    warmed = re.search(r"(\d+) KiB of page cache written before the freeze, for the first pages image", r.log)
    assert warmed and int(warmed[1]) >= 1024 * PAGE // 1024, r.log[-3000:]
    if not key:
        size = sum(p.stat().st_size for p in fin.glob("pages-*.img"))
        assert size == r.stats["pages_written"] * PAGE, (size, r.stats)
    one_boundary(stamps(fin, wl, key), wl.npages)
    restore_final(fin, wl, key, 500)
    canary_only_in_plain(canary, key, (tmp_path / "pre", fin), fin)


def test_cow_dump_in_a_chain_tracks_what_the_task_writes_meanwhile(sweeper, tmp_path):
    """Tracking takes its VMAs back from the snapshot with the pages the
    task wrote since the freeze (a write fault took their protection off)
    marked written, the rest protected.  The threads stamp 25 % of their
    pages a second, half of them since the pre-dump (a VMA is lent from
    a third to dump), so during the snapshot they write pages it
    takes from the parent as well as pages it dumps: the final dump over
    the snapshot must have every one of them (a page taken from the parent
    instead would break the sweep in its image and fail the restored
    threads' check).  The task is stopped (SIGSTOP) as soon as the
    snapshot ends, so the final dump writes the pages the snapshot said
    were written since its freeze, and no more than the threads can have
    written since (every page, had tracking counted them all written)."""
    permille = 250
    wl = sweeper(256, mode="cowsweep-paced", permille=permille)
    advancing(wl, 500)
    r = criu("pre-dump", tmp_path / "pre", "-t", wl.pid, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    advancing(wl, wl.npages // THREADS // 2)
    img = tmp_path / "img"
    started = time.monotonic()
    r = cow_dump(wl, img, "--track-mem", "--prev-images-dir", "../pre")
    os.kill(wl.pid, signal.SIGSTOP)
    since = time.monotonic() - started
    assert re.search(r"VMA %x-[0-9a-f]+ lent by memory tracking" % wl.addr, r.log), r.log[-3000:]
    back = re.search(r"VMA %x-[0-9a-f]+ back to memory tracking: (\d+) pages written since the freeze" % wl.addr,
                     r.log)
    assert back and int(back[1]) > 0, r.log[-3000:]
    assert not in_full(r.log), r.log[-3000:]
    one_boundary(stamps(img, wl, None), wl.npages)

    fin = tmp_path / "fin"
    final_dump(wl, fin, "img")
    # The sweep region's pages the final dump wrote (not those it took from the snapshot)
    _, pm = criusec.Checkpoint(fin).pagemap("pagemap-%d.img" % wl.pid)
    end = wl.addr + wl.npages * PAGE
    written = sum(max(0, min(v + n * PAGE, end) - max(v, wl.addr)) // PAGE
                  for v, n, f in pm if f & criusec.PE_PRESENT and not f & criusec.PE_PARENT)
    at_least, most = int(back[1]), int(back[1]) + wl.npages * permille // 1000 * (since + 1)
    assert at_least <= written <= most < wl.npages, (written, at_least, most)
    one_boundary(stamps(fin, wl, None), wl.npages)
    wait_gone(tree_pids(wl.pid))
    wl.status_path.write_text(wl.dumped_status)
    criu("restore", fin, "-d")
    os.kill(wl.pid, signal.SIGCONT)  # restored stopped, as it was dumped
    advancing(wl, 1000)


@pytest.mark.parametrize("written", ["half", "all"])
def test_cow_dump_in_a_chain_criu_killed(sweeper, tmp_path, written):
    """criu killed while a chain snapshot writes, the sweep region lent to
    it by tracking (half of it written since the pre-dump, paced) or given
    up by tracking before the freeze (all of it, flat out): every thread
    goes on (none waits on a fault nobody serves), and tracking went with
    criu, so the next pass over the pre-dump finds no holder, dumps every
    page (none taken from the parent wrongly) and restores."""
    half = written == "half"
    wl = sweeper(1024, **({"mode": "cowsweep-paced", "permille": 250} if half else {}))
    advancing(wl, 1000)
    r = criu("pre-dump", tmp_path / "pre", "-t", wl.pid, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    # Half: a third or more to dump, lent; all: given up
    advancing(wl, wl.npages // THREADS // 2 if half else wl.npages // THREADS + 1000)
    img = tmp_path / "img"
    p = cow_dump_started(wl, img, "--track-mem", "--prev-images-dir", "../pre")
    p.send_signal(signal.SIGKILL)
    p.wait()
    reap_all()
    log = (img / "dump.log").read_text(errors="replace")
    if half:
        assert re.search(r"VMA %x-[0-9a-f]+ lent by memory tracking" % wl.addr, log), log[-3000:]
    else:
        assert given_up(wl, log), log[-3000:]
    assert "back to memory tracking" not in log, "criu was killed after the snapshot: make the region bigger"
    assert pid_alive(wl.pid)
    advancing(wl, 2000 if half else wl.npages // THREADS)

    fin = tmp_path / "fin"
    wl.dumped_status = wl.read_status()
    r = criu("dump", fin, "-t", wl.pid, "--track-mem", "--prev-images-dir", "../pre")
    assert "Memory tracking was lost" in r.log, r.log[-3000:]
    assert dump_stats(fin)["pages_skipped_parent"] == 0
    one_boundary(stamps(fin, wl, None), wl.npages)
    restore_final(fin, wl, None, 2000 if half else wl.npages // THREADS)


def test_cow_dump_snapshots_in_a_chain_are_incremental(sweeper, tmp_path):
    """A chain of snapshots and no pre-dump (a kubelet's periodic
    checkpoints): the first registers every VMA with its own userfaultfd,
    and memory tracking takes them back once they are written, so the
    second takes what the task did not write from the first (not all of it
    again), and a final dump over it restores."""
    chk = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True).stdout
    if "Memory tracking: uffd" not in chk:
        pytest.skip("a snapshot in a chain is copy-on-write only where memory is tracked with userfaultfd: "
                    + chk.strip())
    wl = sweeper(256, mode="cowsweep-paced")
    advancing(wl, 500)
    s1 = tmp_path / "s1"
    r = cow_dump(wl, s1, "--track-mem")
    back = re.search(r"%d: (\d+) VMAs back to memory tracking" % wl.pid, r.log)
    assert back and int(back[1]) > 0, r.log[-3000:]
    advancing(wl, 500)
    s2 = tmp_path / "s2"
    r = cow_dump(wl, s2, "--track-mem", "--prev-images-dir", "../s1")
    assert not in_full(r.log, (s1 / "dump.log").read_text()) and "not tracked" not in r.log, r.log[-3000:]
    st = dump_stats(s2)
    assert 0 < st["pages_written"] < wl.npages // 2 < st["pages_skipped_parent"], st
    one_boundary(stamps(s2, wl, None), wl.npages)
    advancing(wl, 500)

    fin = tmp_path / "fin"
    final_dump(wl, fin, "s2")
    one_boundary(stamps(fin, wl, None), wl.npages)
    restore_final(fin, wl, None, 500)


PRE_DUMP_SPLICE, PRE_DUMP_READ = 1, 2  # the inventory's pre_dump_mode


def pre_dump_mode(img):
    with open(img / "inventory.img", "rb") as f:
        return pycriu.images.load(f)["entries"][0]["pre_dump_mode"]


def test_pre_dump_reads_its_pages_once_the_tasks_run(sweeper, tmp_path):
    """Where a dump is copy-on-write, a pre-dump given no --pre-dump-mode
    reads its pages once the tasks run (read mode) rather than splicing
    them all while they are frozen: it needs no snapshot, what the tasks
    write meanwhile is tracked.  The threads stamp pages flat out through
    it, and the dump over it restores with every page checked.
    --pre-dump-mode=splice, or --no-cow-dump, keeps splice."""
    wl = sweeper(256)
    advancing(wl, 1000)
    pre = tmp_path / "pre"
    r = criu("pre-dump", pre, "-t", wl.pid, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    chk = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True).stdout
    if "Memory tracking: uffd" not in chk:
        pytest.skip("a dump is copy-on-write by default only where memory is tracked with userfaultfd "
                    f"(no soft-dirty): {chk.strip()}")
    assert "a pre-dump reads its pages once the tasks run (--pre-dump-mode=read)" in r.log, r.log[-3000:]
    assert pre_dump_mode(pre) == PRE_DUMP_READ
    for args in (("--pre-dump-mode=splice",), ("--no-cow-dump",)):
        other = tmp_path / args[0].strip("-")
        r = criu("pre-dump", other, "-t", wl.pid, *args)
        assert pre_dump_mode(other) == PRE_DUMP_SPLICE, args
        assert "reads its pages once the tasks run" not in r.log, args
    advancing(wl, 1000)

    fin = tmp_path / "fin"
    r = final_dump(wl, fin, "pre")
    assert r.stats["pages_skipped_parent"] > 0, r.stats
    restore_final(fin, wl, None, wl.npages // THREADS * 2)


def test_cow_dump_in_a_chain_loses_nothing_to_munmap(sweeper, tmp_path):
    """In a chain, memory unchanged since the last pass is in the parent
    images, not in the snapshot's pages: unmapped while criu writes (the
    16 MiB region the workload filled once, before the pre-dump), it loses
    the snapshot nothing, so the snapshot is not done again; it is exact
    and restores.  The threads write half their pages since the pre-dump
    (paced), so that tracking lends the VMA, which the 16 MiB region joins:
    all written, tracking would give it up and the snapshot would dump the
    region too (and be done again, frozen, when it goes)."""
    wl = sweeper(1024, mode="cowsweep-paced", permille=250, env={"DROP": "munmap"})
    advancing(wl, 1000)
    r = criu("pre-dump", tmp_path / "pre", "-t", wl.pid, check=False)
    if r.returncode:
        pytest.skip("pre-dump does not work here (no memory tracking): " + r.stderr[-300:])
    advancing(wl, wl.npages // THREADS // 2)
    before = wl.read_status()
    img = tmp_path / "img"
    p = dump_while_dropping(wl, img, "--track-mem", "--prev-images-dir", "../pre")
    log = (img / "dump.log").read_text(errors="replace")
    assert p.returncode == 0, log[-4000:]
    assert re.search(r"VMA %x-[0-9a-f]+ lent by memory tracking" % wl.addr, log), log[-3000:]
    assert "dumping again, frozen" not in log and "before it was saved" not in log, log[-3000:]
    one_boundary(stamps(img, wl, None), wl.npages)
    wl.dumped_status = status_at_freeze(img, wl, before)
    restore_and_check(img, wl, None)


def test_cow_dump_through_rpc(sweeper, tmp_path):
    """CriuOpts.cow_dump (what libcriu's criu_set_cow_dump() sends)."""
    wl = sweeper(64)
    advancing(wl, 1000)
    img = tmp_path / "img"
    img.mkdir()
    c = pycriu.criu()
    c.use_binary(CRIU)
    fd = os.open(img, os.O_DIRECTORY)
    try:
        c.opts.images_dir_fd = fd
        c.opts.pid = wl.pid
        c.opts.leave_running = True
        c.opts.cow_dump = True
        c.opts.log_file = "dump.log"
        c.opts.log_level = 4
        c.dump()
    finally:
        os.close(fd)
    log = (img / "dump.log").read_text()
    if "no userfaultfd write-protect" in log:
        pytest.skip("this kernel has no userfaultfd write-protect (with its events)")
    assert "Writing the pages of the running tasks" in log
    one_boundary(stamps(img, wl, None), wl.npages)
    advancing(wl, 1000)


@pytest.mark.parametrize("drop", ["munmap", "dontneed", "mremap"])
def test_cow_dump_done_again_frozen_when_unsaved_memory_goes(sweeper, tmp_path, drop):
    """Memory unmapped (munmap), dropped (MADV_DONTNEED) or moved (mremap)
    before criu has saved it can't be in the snapshot any more: the copy-on-write attempt
    fails, saying why, and criu dumps the tree again, frozen; the task runs
    on, and the second dump restores.  The second starts from the directory
    as it was: the first attempt's files go (a task that exited meanwhile
    would leave its own, unreferenced), the user's stay."""
    wl = sweeper(1024, env={"DROP": drop})
    advancing(wl, 1000)
    before = wl.read_status()
    img = tmp_path / "img"
    img.mkdir()
    (img / "notes.txt").write_text("the user's\n")
    p = dump_while_dropping(wl, img)
    # The second dump may freeze the task before or after it reports the drop
    wl.dumped_status = status_at_freeze(img, wl, before)
    log = (img / "dump.log").read_text(errors="replace")
    assert re.search(r"task %d (unmapped or dropped memory at [0-9a-f]+-[0-9a-f]+|moved memory at [0-9a-f]+ "
                     r"\(mremap\)) before it was saved" % wl.pid, log), \
        "criu saved the region before it went: make the sweep bigger"
    assert "dumping again, frozen" in log
    assert p.returncode == 0, log[-4000:]
    removed = re.search(r"Removed the (\d+) files of the copy-on-write attempt", log)
    assert removed and int(removed.group(1)) > 0, "the first attempt's files were left for the second"
    assert (img / "notes.txt").read_text() == "the user's\n"
    advancing(wl, wl.npages // THREADS)
    restore_and_check(img, wl, None)


def test_cow_dump_a_fork_meanwhile_changes_nothing(sweeper, tmp_path):
    """The task forks while criu writes its pages; the child, outside the
    dumped tree, writes over its copy of the sweep region's first 16 MiB
    and of the second region, and exits.  Its writes are its own copies'
    (its VMAs leave the snapshot's userfaultfd at the fork): the snapshot
    is not done again, holds the task's memory as at the freeze (one sweep
    boundary, every page stamped with its own index, none of the child's
    0xee), and restores."""
    wl = sweeper(1024, env={"DROP": "fork"})
    advancing(wl, 1000)
    before = wl.read_status()
    img = tmp_path / "img"
    p = dump_while_dropping(wl, img)
    log = (img / "dump.log").read_text(errors="replace")
    assert p.returncode == 0, log[-4000:]
    assert "dumping again, frozen" not in log and "before it was saved" not in log, log[-3000:]
    one_boundary(stamps(img, wl, None), wl.npages)
    wl.dumped_status = status_at_freeze(img, wl, before)
    restore_and_check(img, wl, None)


def test_cow_dump_criu_killed_at_random_points(sweeper, keys, tmp_path):
    """criu SIGKILLed at random points of the copy-on-write phase: five
    dumps of one task writing flat out, --encrypt --compress, each killed
    0-300 ms after it started writing the pages.  Every time every thread
    goes on (none waits on a fault nobody serves), the task is unchanged
    (its threads check every page they stamp), and no file criu wrote holds
    the canary in every page."""
    canary = "CANARY-cow-kill-" + os.urandom(8).hex()
    wl = sweeper(1024, canary=canary)
    advancing(wl, 1000)
    rng = random.Random()
    killed = 0
    for i in range(5):
        delay = rng.uniform(0, 0.3)
        img = tmp_path / f"img{i}"
        p = cow_dump_started(wl, img, *enc_args(keys, "encrypt-compress"))
        time.sleep(delay)
        killed += p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        reap_all()
        assert pid_alive(wl.pid), f"round {i}, killed {delay:.3f} s in"
        advancing(wl, wl.npages // THREADS)
        assert files_with(img, canary.encode()) == [], f"round {i}, killed {delay:.3f} s in"
    assert killed >= 3, f"criu finished before its kill in {5 - killed} rounds of 5: make the region bigger"
