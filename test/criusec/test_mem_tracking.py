"""Memory tracking without soft-dirty (issue 20): userfaultfd write-protect
(async) and PAGEMAP_SCAN, criu --mem-tracker=uffd.

Pre-dump, pre-dump, dump of a process that keeps rewriting an eighth of
256 MiB, plain and --encrypt --compress: the later dumps take every other
page from their parent (stats-dump) and the restored process finds every
byte as it was.  Between the passes the memory changes shape (a fork, a
new and an unmapped VMA, MADV_DONTNEED, mremap): what was not tracked is
dumped in full and counted, and restore still finds every byte.  A task
that closes all its fds keeps its chain; the tracking leaves no fd in it.
A lost holder makes the next dump dump everything, never take a parent's
page.

They need a kernel with userfaultfd write-protect (async) and PAGEMAP_SCAN
(6.7 or later) and skip, saying so, without.
"""
import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

import chainkeys
from helpers import (CRIU, REPO, Workload, build_workload, churn_generation, reap_all, tree_pids, wait_gone,
                     wait_rewritten)

sys.path.insert(0, str(REPO / "build" / "src" / "lib"))
import pycriu  # noqa: E402

HOLDERS = pathlib.Path("/run/criu-mem-track")
MIB = 256
HUGE = 512  # 4 KiB pages in a 2 MiB huge page
UFFD = ["--mem-tracker=uffd"]


@functools.cache
def uffd_tracking():
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track", *UFFD],
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def needs_uffd(f):
    ok, why = uffd_tracking()
    return pytest.mark.skipif(not ok, reason="memory tracking with userfaultfd needs userfaultfd "
                              f"write-protect (async) and PAGEMAP_SCAN, Linux 6.7 or later: {why}")(f)


# --- chain keys: criusec leaves one per encrypted checkpoint in root's user keyring
def holders():
    """{token: pid} of the tracking holders of this test run.  A holder is
    re-parented to the nearest child subreaper, this process (conftest):
    another run's holders (another pytest on the machine) are not ours to
    count, kill or clean up after."""
    out = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            ppid = int(re.search(r"^PPid:\s+(\d+)", (p / "status").read_text(), re.M).group(1))
        except (OSError, AttributeError):
            continue
        if len(argv) > 4 and argv[1] == b"__mem-track-holder" and ppid == os.getpid():
            out[argv[4].decode()] = int(p.name)
    return out


@pytest.fixture(autouse=True)
def cleanup():
    """No holder, chain key or big image of a test outlives it."""
    keys, before = set(chainkeys.chain_keys()), set(holders())
    yield
    killed = set()
    for token, pid in holders().items():
        if token not in before:
            os.kill(pid, signal.SIGKILL)
            killed.add(token)
    for token in killed:
        (HOLDERS / token).unlink(missing_ok=True)  # a killed holder's socket
    time.sleep(0.1)
    reap_all()
    for serial in set(chainkeys.chain_keys()) - keys:
        chainkeys.unlink(serial)


@pytest.fixture(scope="module")
def memtrack_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "memtrack")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(d), "alice"], check=True, capture_output=True)
    return str(d / "alice-cert.pem"), str(d / "alice-key.pem")


def stats(img):
    with open(img / "stats-dump", "rb") as f:
        return pycriu.images.load(f)["entries"][0]["dump"]


def inventory(img):
    with open(img / "inventory.img", "rb") as f:
        return pycriu.images.load(f)["entries"][0]


def holder_of(img, enc, new_tokens):
    """The holder a dump names: in its inventory, sealed when encrypted."""
    if not enc:
        return inventory(img).get("mem_track_holder")
    assert len(new_tokens) <= 1, new_tokens
    for t in new_tokens:
        assert t.encode() not in (img / "inventory.img").read_bytes(), "the holder's name is in clear"
        return t
    return None


def uffd_fds(pid):
    """The task's fds that are userfaultfds: there must be none."""
    out = []
    for p in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            if "userfaultfd" in os.readlink(p):
                out.append(p.name)
        except OSError:
            pass
    return out


def dump(criu, action, img, pid, parent, *args):
    img.mkdir()
    more = ["--prev-images-dir", f"../{parent}"] if parent else []
    pids = tree_pids(pid)
    criu.run(action, img, "-t", pid, "--track-mem", *UFFD, *more, *args)
    if action == "dump":
        wait_gone(pids)
    return stats(img)


@needs_uffd
def test_check_says_which_mechanism():
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track", *UFFD], capture_output=True, text=True)
    assert r.returncode == 0 and "Memory tracking: uffd" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True)
    assert r.returncode == 0 and re.search(r"Memory tracking: (soft-dirty|uffd)", r.stdout), r.stdout
    r = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track", "--mem-tracker=bogus"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--mem-tracker" in r.stdout + r.stderr


@needs_uffd
def test_holder_goes_with_its_tasks(workloads, criu, tmp_path):
    """A holder whose tasks are all gone has nothing left to track: it exits
    (and removes its socket) instead of waiting out its hour."""
    wl = workloads("churn", 16)
    before = set(holders())
    dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
    token = holder_of(tmp_path / "pre1", [], set(holders()) - before)
    assert token in holders(), "the pre-dump left no holder"
    time.sleep(0.5)
    assert token in holders(), "the holder left while its task runs"
    os.kill(wl.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while token in holders() and time.monotonic() < deadline:
        reap_all()
        time.sleep(0.05)
    assert token not in holders(), "the holder outlived its task"
    assert not (HOLDERS / token).exists(), "the holder left its socket"


@needs_uffd
@pytest.mark.parametrize("kind", ["plain", "encrypted-compressed"])
def test_uffd_chain(workloads, criu, tmp_path, kind, keys):
    enc = ["--encrypt", "--compress", "--tls-cert", keys[0]] if kind != "plain" else []
    wl = workloads("churn", MIB)
    pages, hot = map(int, wl.last.split()[-2:])
    cold = pages - hot

    before = set(holders())
    s = dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None, *enc)
    assert s["pages_written"] >= pages and s["pages_skipped_parent"] == 0, s
    assert uffd_fds(wl.pid) == []
    token = holder_of(tmp_path / "pre1", enc, set(holders()) - before)
    assert token in holders(), "the pre-dump left no holder"
    st = os.stat(HOLDERS)
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0, oct(st.st_mode)

    for prev, name in (("pre1", "pre2"), ("pre2", "img")):
        wait_rewritten(wl)
        before = set(holders())
        s = dump(criu, "dump" if name == "img" else "pre-dump", tmp_path / name, wl.pid, prev, *enc)
        print(name, s)
        assert s["pages_skipped_parent"] >= cold - HUGE, (name, s)
        assert hot <= s["pages_written"] <= hot + HUGE + 1024, (name, s)
        assert token not in holders(), "the holder outlived the run that took its userfaultfds"
        if name == "pre2":
            token = holder_of(tmp_path / name, enc, set(holders()) - before)
            assert token in holders()
    assert token not in holders() and not (HOLDERS / token).exists(), "the final dump left a holder"
    assert holder_of(tmp_path / "img", enc, set(holders()) - before) is None
    # The final dump, frozen while it writes, wrote the page cache for its
    # pages before the freeze and its pages image over it, cut to what it
    # wrote: plain, exactly its pages (encrypted, restore checks the size)
    log = (tmp_path / "img" / "dump.log").read_text()
    warmed = re.search(r"(\d+) KiB of page cache written before the freeze", log)
    assert warmed and int(warmed[1]) * 1024 >= hot * 4096, log[-3000:]
    if not enc:
        size = sum(p.stat().st_size for p in (tmp_path / "img").glob("pages-*.img"))
        assert size == s["pages_written"] * 4096, (size, s)

    criu.restore(tmp_path / "img", *(["--tls-key", keys[1]] if enc else []))
    gen = churn_generation(wl)  # every byte as it was, whichever dump holds it
    wait_rewritten(wl)
    assert churn_generation(wl) > gen


def start_memtrack(memtrack_bin, tmp_path, *args):
    wl = Workload(memtrack_bin, "memtrack", tmp_path, [MIB, *args])
    return wl


def step(wl, n):
    os.kill(wl.pid, signal.SIGUSR2)
    wl.wait_status(lambda s: f"stepped {n}" in s, f"step {n}")


def check_child(path):
    before = path.read_text().split(" ", 1)[0] if path.exists() else ""
    pid = None
    for line in open(path.parent / "child.pid"):
        pid = int(line)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = path.read_text() if path.exists() else ""
        if s and s.split(" ", 1)[0] != before:
            return s.split(" ", 1)[1]
        time.sleep(0.05)
    raise AssertionError("the child did not report")


@needs_uffd
@pytest.mark.parametrize("closefds", [False, True], ids=["shapes", "shapes-closefds"])
def test_uffd_chain_memory_changes_shape(memtrack_bin, criu, tmp_path, closefds):
    """A fork, a new VMA, an unmapped one, MADV_DONTNEED and mremap between
    the passes: untracked memory is dumped in full and counted, and the
    restored parent and child find every byte as they left it.  The same
    for a task that closes every fd it has, after each step."""
    wl = start_memtrack(memtrack_bin, tmp_path, *(["closefds"] if closefds else []))
    try:
        pages = int(wl.last.split()[-2])
        s1 = dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
        assert s1["pages_written"] >= pages, s1
        step(wl, 1)
        children = [int(c) for c in open(f"/proc/{wl.pid}/task/{wl.pid}/children").read().split()]
        assert len(children) == 1
        (tmp_path / "child.pid").write_text(f"{children[0]}\n")
        if closefds:
            assert os.listdir(f"/proc/{wl.pid}/fd") == [], "the workload kept an fd"

        s2 = dump(criu, "pre-dump", tmp_path / "pre2", wl.pid, "pre1")
        print("pre2", s2)
        # The child is new (no parent to take from: dumped whole); the new
        # and moved VMAs of the parent (and region 0, if the moved one merged
        # with it) were not tracked: dumped whole and counted
        assert s2["pages_written"] >= pages + 2 * 1024, s2
        assert s2["pages_untracked_vma"] >= 2 * 1024, s2
        log = (tmp_path / "pre2" / "pre-dump.log").read_text()
        assert f"{children[0]}: no tracking record" in log
        assert "is new, changed or given up since the last pass" in log
        assert uffd_fds(wl.pid) == [] and uffd_fds(children[0]) == []
        if closefds:
            assert os.listdir(f"/proc/{wl.pid}/fd") == [], "tracking left an fd in the task"

        step(wl, 2)
        s3 = dump(criu, "dump", tmp_path / "img", wl.pid, "pre2")
        print("img", s3)
        assert s3["pages_skipped_parent"] >= pages, s3  # both tasks' cold memory
        assert s3["pages_untracked_vma"] >= 1024, s3    # the grown, moved region
        assert s3["pages_untracked_task"] == 0, s3

        criu.restore(tmp_path / "img")
        assert wl.report() == "memtrack OK 2"
        assert check_child(pathlib.Path(str(wl.status_path) + ".child")) == "child OK 1"
    finally:
        wl.kill()


@needs_uffd
def test_lost_holder_dumps_everything(workloads, criu, tmp_path):
    """The holder killed between two passes: the next dump can't know what
    was written, so it dumps every page and takes none from the parent."""
    wl = workloads("churn", MIB)
    pages = int(wl.last.split()[-2])
    dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
    token = inventory(tmp_path / "pre1")["mem_track_holder"]
    os.kill(holders()[token], signal.SIGKILL)
    time.sleep(0.2)
    reap_all()
    wait_rewritten(wl)

    s = dump(criu, "dump", tmp_path / "img", wl.pid, "pre1")
    print(s)
    assert s["pages_skipped_parent"] == 0, s
    assert s["pages_written"] >= pages and s["pages_untracked_task"] >= pages, s
    log = (tmp_path / "img" / "dump.log").read_text()
    assert "Memory tracking was lost" in log and "no tracking record" in log

    (HOLDERS / token).unlink(missing_ok=True)  # the killed holder's socket
    criu.restore(tmp_path / "img")
    churn_generation(wl)


@needs_uffd
def test_holder_ends_with_the_chain(workloads, criu, tmp_path):
    """A plain dump (not --track-mem) of a tracked task ends its chain: the
    holder goes, and with it the registration (the task may use
    userfaultfd itself again)."""
    wl = workloads("churn", 32)
    dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
    token = inventory(tmp_path / "pre1")["mem_track_holder"]
    assert token in holders()
    maps = open(f"/proc/{wl.pid}/smaps").read()
    assert " uw" in maps or "uw " in maps, "no VMA is registered for write-protect"
    (tmp_path / "img").mkdir()
    criu.run("dump", tmp_path / "img", "-t", wl.pid, "--leave-running", *UFFD, "--prev-images-dir", "../pre1")
    assert token not in holders() and not (HOLDERS / token).exists()
    time.sleep(0.2)
    maps = open(f"/proc/{wl.pid}/smaps").read()
    assert not re.search(r"^VmFlags:.* uw", maps, re.M), "the registration outlived the chain"
    churn_generation(wl)


@needs_uffd
def test_rpc_mem_tracker(workloads, tmp_path):
    """The RPC's mem_tracker (what runc and libcriu send) chooses the mechanism."""
    import pycriu.rpc_pb2 as rpc
    wl = workloads("churn", 32)
    pages, hot = map(int, wl.last.split()[-2:])
    for name, parent in (("pre1", None), ("pre2", "../pre1")):
        d = tmp_path / name
        d.mkdir()
        if parent:
            wait_rewritten(wl)
        c = pycriu.criu()
        c.use_binary(CRIU)
        fd = os.open(d, os.O_DIRECTORY)
        try:
            c.opts.images_dir_fd = fd
            c.opts.pid = wl.pid
            c.opts.track_mem = True
            c.opts.mem_tracker = rpc.TRACK_UFFD
            c.opts.log_file = "pre-dump.log"
            c.opts.log_level = 4
            c.opts.mem_track_hold = 600
            if parent:
                c.opts.parent_img = parent
            c.pre_dump()
        finally:
            os.close(fd)
    s = stats(tmp_path / "pre2")
    log = (tmp_path / "pre2" / "pre-dump.log").read_text()
    tracked = "\n".join(line for line in log.splitlines() if "mem-track" in line or "racking" in line)
    assert s["pages_skipped_parent"] >= pages - hot - HUGE, (s, tracked)
    assert "write-protected for tracking" in log, tracked
    (pid,) = holders().values()
    assert open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[5] == b"600", "mem_track_hold not passed on"


@needs_uffd
def test_holder_time_limit(workloads, criu, tmp_path):
    """--mem-track-hold (here a config file line): a holder nobody asks for
    goes at its time limit, though its task runs, and removes its socket;
    the next pass finds no holder and dumps everything.  0 is refused."""
    wl = workloads("churn", 16)
    pages = int(wl.last.split()[-2])
    conf = tmp_path / "criu.conf"
    conf.write_text("mem-track-hold 1\n")
    dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None, "--config", str(conf))
    token = inventory(tmp_path / "pre1")["mem_track_holder"]
    deadline = time.monotonic() + 60
    while token in holders() and time.monotonic() < deadline:
        reap_all()
        time.sleep(0.1)
    assert token not in holders(), "the holder outlived --mem-track-hold"
    assert not (HOLDERS / token).exists(), "the holder left its socket"
    s = dump(criu, "pre-dump", tmp_path / "pre2", wl.pid, "pre1")
    assert s["pages_skipped_parent"] == 0 and s["pages_untracked_task"] >= pages, s
    assert "is gone" in (tmp_path / "pre2" / "pre-dump.log").read_text()

    (tmp_path / "bad").mkdir()
    r = subprocess.run([CRIU, "pre-dump", "-D", str(tmp_path / "bad"), "-t", str(wl.pid), "--track-mem", *UFFD,
                        "--mem-track-hold", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--mem-track-hold" in r.stdout + r.stderr, r.stdout + r.stderr


@needs_uffd
def test_task_with_its_own_userfaultfd(memtrack_bin, criu, tmp_path):
    """A task that registered a VMA with a userfaultfd of its own keeps it:
    criu's registration of that VMA fails (EBUSY), and the VMA is dumped
    whole at every pass, counted; the rest is tracked."""
    wl = start_memtrack(memtrack_bin, tmp_path, "ownuffd")
    try:
        pages, hot = map(int, wl.last.split()[-2:])
        dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
        log = (tmp_path / "pre1" / "pre-dump.log").read_text()
        assert re.search(r"can't register [0-9a-f]+-[0-9a-f]+: 16\b", log), "no EBUSY in the log"
        s = dump(criu, "pre-dump", tmp_path / "pre2", wl.pid, "pre1")
        print(s)
        assert s["pages_untracked_vma"] >= 1024, s           # region 2, whole
        assert s["pages_skipped_parent"] >= pages - hot - HUGE, s
        assert wl.report() == "memtrack OK 0"
    finally:
        wl.kill()


@pytest.fixture(scope="module")
def memshare_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "memshare")


def thp_kb(pid, start, size):
    """AnonHugePages (kB) of the VMAs inside [start, start + size)."""
    total, inside = 0, False
    for line in open(f"/proc/{pid}/smaps"):
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            s, e = int(m.group(1), 16), int(m.group(2), 16)
            inside = s >= start and e <= start + size
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


def compared_shmem(log):
    """{path: [(unchanged, dumped), ...]} of the shared memory the log says was compared with the parent."""
    out = {}
    for m in re.finditer(r"Shared memory 0x[0-9a-f]+ \((.*)\) compared with the parent checkpoint: "
                         r"(\d+) pages unchanged, taken from it; (\d+) changed or new, dumped", log):
        out.setdefault(m.group(1).split(" ")[0], []).append((int(m.group(2)), int(m.group(3))))
    return out


@needs_uffd
@pytest.mark.parametrize("how", ["plain", "encrypted"])
def test_uffd_chain_shared_memory_and_thp(memshare_bin, criu, tmp_path, keys, how):
    """Shared anonymous memory shared with a child, a memfd (written through
    its mapping and with write()) and SysV shm, each rewritten in part by
    both tasks between the passes, and a THP region rewritten in part;
    plain, and --encrypt --compress.  Each pass saves each shared object,
    pre-dumps too, and from the second on compares it with the parent
    checkpoint page by page: exactly the rewritten pages are dumped, the
    write()n ones included, the rest taken from the parent, said once per
    object in the log; none counted as untracked.  The THP region is
    tracked (the parent's pages taken).  Restore finds every byte, and the
    memory still shared."""
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("transparent huge pages are off on this kernel (/sys/kernel/mm/transparent_hugepage)")
    enc = ["--encrypt", "--compress", "--tls-cert", keys[0]] if how == "encrypted" else []
    wl = Workload(memshare_bin, "memshare", tmp_path)
    try:
        addr, size, sh = wl.last.split()[-3:]
        addr, size, sh = int(addr, 16), int(size), int(sh)
        thp_pages = size // 4096
        huge_kb = thp_kb(wl.pid, addr, size)
        if huge_kb == 0:
            pytest.skip("no huge page for the MADV_HUGEPAGE region (AnonHugePages 0): none free")
        print("AnonHugePages kB", huge_kb)
        objects = {"/dev/zero", "/memfd:memshare", "/SYSV00000000"}

        s1 = dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None, *enc)
        print("pre1", s1)
        # No parent: every shared page is saved, none could be taken
        assert s1["shpages_written"] == 3 * sh and s1["shpages_skipped_parent"] == 0, s1
        assert s1["pages_untracked_shmem"] == 0, s1
        assert len(list((tmp_path / "pre1").glob("pagemap-shmem-*.img"))) == 3
        step(wl, 1)

        # Step 1 rewrote 64 pages of each object (32 by each task)
        s2 = dump(criu, "pre-dump", tmp_path / "pre2", wl.pid, "pre1", *enc)
        print("pre2", s2)
        assert s2["shpages_written"] == 3 * 64 and s2["shpages_skipped_parent"] == 3 * (sh - 64), s2
        assert s2["pages_untracked_shmem"] == 0, s2
        objs = compared_shmem((tmp_path / "pre2" / "pre-dump.log").read_text())
        assert objs == {o: [(sh - 64, 64)] for o in objects}, objs
        # The THP region's unwritten pages came from the parent (a written
        # huge page may count whole)
        assert s2["pages_skipped_parent"] >= thp_pages - 4 * HUGE, s2
        step(wl, 2)

        # Step 2: 64 more of each, and 4 of the memfd by write(), which no
        # page table sees
        (tmp_path / "img").mkdir()
        pids = tree_pids(wl.pid)
        r = criu.run("dump", tmp_path / "img", "-t", wl.pid, "--track-mem", *UFFD, "--prev-images-dir", "../pre2",
                     "--display-stats", *enc)
        wait_gone(pids)
        s3 = stats(tmp_path / "img")
        print("img", s3)
        out = r.stdout + r.stderr + (tmp_path / "img" / "dump.log").read_text()
        assert f"Shared memory pages written: {s3['shpages_written']}, " \
               f"of them untracked: {s3['pages_untracked_shmem']}" in out, r.stdout
        assert s3["shpages_written"] == 3 * 64 + 4 and s3["shpages_skipped_parent"] == 3 * sh - 3 * 64 - 4, s3
        assert s3["pages_untracked_shmem"] == 0, s3
        log = (tmp_path / "img" / "dump.log").read_text()
        objs = compared_shmem(log)
        print(objs)
        assert objs == {"/dev/zero": [(sh - 64, 64)], "/memfd:memshare": [(sh - 68, 68)],
                        "/SYSV00000000": [(sh - 64, 64)]}, objs
        # The dump, frozen, compared with the parent's objects read before the freeze
        assert len(re.findall(rf"Shared memory 0x[0-9a-f]+ of the parent read before the freeze: {sh} pages",
                              log)) == 3, log[-3000:]
        assert s3["pages_skipped_parent"] >= thp_pages - 4 * HUGE, s3

        criu.restore(tmp_path / "img", *(["--tls-key", keys[1]] if enc else []))
        assert wl.report() == "memshare OK 2"
        # Still shared with the child: its writes of step 3 are seen by the parent
        step(wl, 3)
        assert wl.report() == "memshare OK 3"
    finally:
        wl.kill()


@needs_uffd
def test_shared_memory_the_parent_has_no_image_of(memshare_bin, criu, tmp_path):
    """A parent without images of the shared objects (made by a criu that did
    not pre-dump shared memory, or through a page server): the next pass
    dumps each object in full, says so once per object and counts its pages
    as untracked; restore finds every byte."""
    wl = Workload(memshare_bin, "memshare", tmp_path)
    try:
        sh = int(wl.last.split()[-1])
        dump(criu, "pre-dump", tmp_path / "pre1", wl.pid, None)
        shmem = list((tmp_path / "pre1").glob("pagemap-shmem-*.img"))
        assert len(shmem) == 3, shmem
        for p in shmem:
            p.unlink()
        step(wl, 1)
        s = dump(criu, "dump", tmp_path / "img", wl.pid, "pre1")
        print(s)
        assert s["pages_untracked_shmem"] == 3 * sh and s["shpages_skipped_parent"] == 0, s
        log = (tmp_path / "img" / "dump.log").read_text()
        objs = {m.split(" ")[0] for m in re.findall(r"Shared memory 0x[0-9a-f]+ \((.*)\) is not in the parent "
                                                      rf"checkpoint .*: {sh} pages dumped in full", log)}
        assert objs == {"/dev/zero", "/memfd:memshare", "/SYSV00000000"}, objs
        assert compared_shmem(log) == {}
        criu.restore(tmp_path / "img")
        assert wl.report() == "memshare OK 1"
    finally:
        wl.kill()
