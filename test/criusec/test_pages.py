"""The page cipher: memory canaries never reach a file, pages are checked
before any restored task runs (hugetlb memory too; tampered pages of every
other kind are refused in test_attack_disk.py and test_attack_page_server.py),
and dedup and lazy pages still work."""
import os
import re
import shutil
import subprocess

import pytest

from helpers import (CRIU, REGIONS, biggest_pages, bind_to_parent, crit_decode, damaged_copy, dump_through_page_server,
                     files_with, flip_a_page, flip_in, lazy_restore, lazy_restored, merged, needs_uffd, page_images,
                     refused, remote_lazy_restore, server_refused, touched_and_killed)


BIG_MIB = 256


def test_memory_canaries_absent_and_restored(memcanary, criu, tmp_path, keys):
    # A plain dump first: every region's canary does reach a page image, so
    # the encrypted dump below really is tested on each of these paths.
    wl, canary = memcanary("plain", BIG_MIB)
    criu.dump(wl, tmp_path / "plain")
    pages = [p.read_bytes() for p in page_images(tmp_path / "plain")]
    for region in REGIONS + ("big",):
        needle = f"{canary}-{region}".encode()
        assert any(needle in p for p in pages), f"plain dump: no {region} canary in the page images"
    plain_size = sum(len(p) for p in pages)
    del pages
    shutil.rmtree(tmp_path / "plain")

    wl, canary = memcanary("enc", BIG_MIB)
    img = tmp_path / "enc"
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0])
    assert files_with(img, canary.encode()) == []
    assert files_with(tmp_path, canary.encode()) in ([], ["memcanary.log"]), "a canary in the work dir"
    # Pages keep their size and place; one tag image per page image, small.
    pages, tags = page_images(img), sorted(img.glob("pagetags-*.img"))
    assert [p.name[len("pages-"):] for p in pages] == [t.name[len("pagetags-"):] for t in tags]
    pages_size = sum(p.stat().st_size for p in pages)
    assert abs(pages_size - plain_size) <= 64 << 10, "encrypted page images changed size"
    tags_size = sum(t.stat().st_size for t in tags)
    assert tags_size <= pages_size * 0.005, f"page tags take {tags_size} of {pages_size} bytes"
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memcanary OK {BIG_MIB}"
    # The big region's pagemap entries (1024 pages each) were read as one:
    # its workers started once (criusec_pages_queue).
    calls = re.findall(r"criusec: pages-\d+\.img: (\d+) pages at 0x[0-9a-f]+ read in one call",
                       (img / "restore.log").read_text())
    assert max(map(int, calls)) >= BIG_MIB * 256, calls


def test_auto_dedup_restore(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    name = biggest_pages(img)
    blocks = (img / name).stat().st_blocks
    criu.restore(img, "--auto-dedup", "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 0"
    # Restore punched out the pages it had read (and checked).
    assert (img / name).stat().st_blocks < blocks


def test_dedup_then_restore(memcanary, criu, tmp_path, keys):
    """criu dedup over an encrypted parent.  Pre-dump chains cannot be made on
    this kernel (no soft-dirty tracking: criu pre-dump fails), so the chain
    is made from two full dumps of the same process: the second is bound to
    the first (pycriu, with the parent's key) and linked to it.  dedup then
    punches out of the parent every page the child holds again."""
    wl, _ = memcanary("dedup")
    a, b = tmp_path / "a", tmp_path / "b"
    criu.run("dump", a, "-t", wl.pid, "--leave-running", "--encrypt", "--tls-cert", keys["alice"][0])
    criu.dump(wl, b, "--encrypt", "--tls-cert", keys["alice"][0])
    bind_to_parent(b, a, keys["alice"][1])
    name = biggest_pages(a)
    blocks = (a / name).stat().st_blocks
    criu.run("dedup", b, "--tls-key", keys["alice"][1])
    assert (a / name).stat().st_blocks < blocks, "dedup punched nothing from the parent"
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 0"


def test_dump_with_auto_dedup(memcanary, criu, tmp_path, keys):
    wl, canary = memcanary("autodedup")
    img = tmp_path / "img"
    criu.dump(wl, img, "--auto-dedup", "--encrypt", "--tls-cert", keys["alice"][0])
    assert files_with(img, canary.encode()) == []
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 0"


@needs_uffd
def test_lazy_pages(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    r, daemon = lazy_restore(criu, img, keys["alice"][1], tmp_path)
    try:
        lazy_restored(wl, img, r, daemon)
    finally:
        daemon.kill()


@needs_uffd
def test_lazy_pages_refuse_a_tampered_page(mem_pristine, criu, tmp_path, keys):
    """Lazy restore starts the task before its pages arrive (by design); a
    page that fails its tag is never copied in: the daemon stops naming it
    and poisons what it never sent, so the task dies when it touches it."""
    wl, img = mem_pristine
    name = flip_a_page(img)
    r, daemon = lazy_restore(criu, img, keys["alice"][1], tmp_path)
    try:
        assert daemon.wait(timeout=60) != 0, "the lazy-pages daemon served a tampered page"
        log = (img / "lazy-pages.log").read_text()
        assert f"{name}: page" in log and "failed authentication" in log, log[-3000:]
        touched_and_killed(wl)
    finally:
        daemon.kill()


@needs_uffd
def test_lazy_pages_apply_the_restore_policy(mem_pristine, criu, tmp_path, keys):
    """The lazy-pages daemon is a reader like restore: under --trust it
    serves no page of an unsigned checkpoint (the task never gets them)."""
    wl, img = mem_pristine
    r, daemon = lazy_restore(criu, img, keys["alice"][1], tmp_path, "--trust", keys["alice"][0])
    try:
        assert daemon.wait(timeout=60) != 0, "the lazy-pages daemon served an unsigned checkpoint under --trust"
        log = (img / "lazy-pages.log").read_text()
        assert "the checkpoint is unsigned" in log, log[-3000:]
        touched_and_killed(wl)
    finally:
        daemon.kill()


@needs_uffd
def test_remote_lazy_pages_through_the_page_server(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    r, daemon, server = remote_lazy_restore(criu, img, keys["alice"][1], tmp_path)
    try:
        lazy_restored(wl, img, r, daemon)
    finally:
        daemon.kill()
        server.kill()


@needs_uffd
def test_remote_lazy_pages_with_several_keys(mem_pristine, criu, tmp_path, keys):
    """Rotation: page-server, lazy-pages and restore each hold a key that is not a
    recipient (tried first) and the recipient's."""
    wl, img = mem_pristine
    r, daemon, server = remote_lazy_restore(criu, img, [keys["bob"][1], keys["alice"][1]], tmp_path)
    try:
        lazy_restored(wl, img, r, daemon)
        for log in ("page-server.log", "lazy-pages.log", "restore.log"):
            text = (img / log).read_text()
            assert f"unlocked with {keys['alice'][1]}" in text and "trying the next key" in text, log
    finally:
        daemon.kill()
        server.kill()


@needs_uffd
def test_page_server_applies_the_restore_policy(mem_pristine, criu, tmp_path, keys):
    """criu page-server --lazy-pages serving an unsigned checkpoint under --trust: no page leaves."""
    wl, img = mem_pristine
    r, daemon, server = remote_lazy_restore(criu, img, keys["alice"][1], tmp_path, "--trust", keys["alice"][0])
    server_refused(wl, img, daemon, server, "the checkpoint is unsigned")


@needs_uffd
def test_page_server_refuses_to_serve_a_tampered_page(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    name = flip_a_page(img)
    r, daemon, server = remote_lazy_restore(criu, img, keys["alice"][1], tmp_path)
    server_refused(wl, img, daemon, server, f"{name}: page", "failed authentication")


# ---- criu dump --page-server: pages written by a page server without the key ----
#
# Under --encrypt the page server needs --tls.  The workloads here keep their
# "sysv" canary in private memory: upstream CRIU cannot send SysV shm through
# a TLS page server (its IPC namespace is dumped by a forked child, whose TLS
# records the server cannot decrypt), encrypted or not.


def test_page_server_dump_canaries_absent_and_restored(memcanary, criu, tmp_path, keys):
    # Plain first: the canaries do travel through the page server into its files.
    wl, canary = memcanary("ps-plain", BIG_MIB, sysv=False)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "plain")
    assert r.returncode == 0, r.stderr
    served = b"".join(p.read_bytes() for p in page_images(srv))
    for region in REGIONS + ("big",):
        assert f"{canary}-{region}".encode() in served, f"the {region} canary never reached the page server"

    wl, canary = memcanary("ps-enc", BIG_MIB, sysv=False)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "enc", "--encrypt")
    assert r.returncode == 0, (dump / "dump.log").read_text()[-3000:]
    assert page_images(srv) and not page_images(dump), "the pages were not written by the page server"
    for d in (srv, dump):
        for region in REGIONS + ("big",):
            assert not files_with(d, f"{canary}-{region}".encode()), f"{region} canary in {d.name}"
        assert not files_with(d, canary.encode())
    pagemaps = [p for p in srv.iterdir() if p.name.startswith("pagemap-")]
    assert pagemaps and all(p.read_bytes()[:8] == b"CRIUSEC\x01" for p in pagemaps), \
        "the page server wrote a pagemap that is not sealed"
    img = merged(tmp_path / "enc", srv, dump)
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memcanary OK {BIG_MIB}"


def test_page_server_dump_needs_tls(memcanary, criu, tmp_path, keys):
    wl, canary = memcanary("ps-notls", sysv=False)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "notls", "--encrypt",
                                            "--tls-cert", keys["alice"][0], tls=False)
    assert r.returncode != 0, "an encrypted dump sent the pagemaps' key to a page server without TLS"
    assert "--encrypt with --page-server needs --tls" in (dump / "dump.log").read_text()
    assert not files_with(srv, canary.encode()) and not files_with(dump, canary.encode())
    assert wl.report() == "memcanary OK 0", "the dumped task did not go on running"


# --- hugetlb ---------------------------------------------------------------
#
# Encrypted page images are never read by the restorer blob itself: criu
# premaps every private VMA and fills it with pages it has checked.  Private
# hugetlb VMAs (anonymous, or a private map of a hugetlbfs file) cannot be
# premapped: the restorer maps them and preadv()s their pages.  For those,
# criu checks the pages and hands the restorer a memfd of verified plaintext
# instead of the page image (unseal_vma_ios() in criu/pagemap.c, the
# criusec_pages_plain_*() glue).  Shared hugetlb memory (MAP_SHARED
# anonymous, memfd_create(MFD_HUGETLB)) is dumped as memfds of their own
# and restored by criu itself through the checked page reads.

HUGE_PAGES_NEEDED = 6  # what the hugecanary workload holds (2 MiB pages)
HUGE_PAGES_FREE = HUGE_PAGES_NEEDED + 1  # and one criu maps to learn the hugetlb device (kerndat)
# region -> the memfd.img name of the hugetlb file holding it (shared ones)
HUGE_SHARED = {"hugeshared": "/anon_hugepage", "hugememfd": "hugecanary", "hugememfdfile": "hugecanary-priv"}
HUGE_PRIVATE = ("hugepriv", "hugememfdpriv")  # the restorer fills these from the memfd
HUGE_REGIONS = HUGE_PRIVATE + tuple(HUGE_SHARED)
PE_PRESENT = 4


def meminfo(field):
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k == field:
                return int(v.split()[0])
    return None


@pytest.fixture
def hugepages():
    """The free 2 MiB pages the workload needs: as root, the pool is grown
    by what is missing for the test and given back after (a fresh machine
    has none)."""
    size, free = meminfo("Hugepagesize"), meminfo("HugePages_Free") or 0
    if size != 2048:
        pytest.skip(f"the default huge page size is {size} kB, the hugetlb tests need 2048 kB")
    pool, before = "/proc/sys/vm/nr_hugepages", None
    if free < HUGE_PAGES_FREE and os.geteuid() == 0:
        with open(pool) as f:
            before = int(f.read())
        with open(pool, "w") as f:
            f.write(str(before + HUGE_PAGES_FREE - free))
        free = meminfo("HugePages_Free") or 0
    try:
        if free < HUGE_PAGES_FREE:
            pytest.skip(f"HugePages_Free is {free}, the hugetlb tests need {HUGE_PAGES_FREE} free 2 MiB pages "
                        f"(raise /proc/sys/vm/nr_hugepages)")
        yield
    finally:
        if before is not None:
            with open(pool, "w") as f:
                f.write(str(before))


def huge_regions(wl):
    """{region: (address, length)} from the workload's ready status."""
    out = {}
    for word in wl.last.split()[2:]:
        name, where = word.split("=")
        addr, length = where.split("+")
        out[name] = (int(addr, 16), int(length, 16))
    assert set(out) == set(HUGE_PRIVATE + ("hugeshared", "hugememfd")), wl.last
    return out


@pytest.fixture
def hugecanary(memcanary, hugepages):
    def start(tag):
        wl, canary = memcanary(tag, mode="hugecanary")
        return wl, canary, huge_regions(wl)
    return start


def page_offset(pagemap, key, vaddr):
    """(pages image name, offset in it) of the page at vaddr, from a pagemap image."""
    entries = crit_decode(pagemap, key)
    off = 0
    for e in entries[1:]:
        if not e.get("flags", PE_PRESENT) & PE_PRESENT:
            continue
        start, n = e["vaddr"], e["nr_pages"]
        if start <= vaddr < start + n * 4096:
            return f"pages-{entries[0]['pages_id']}.img", off + (vaddr - start)
        off += n * 4096
    raise AssertionError(f"no page at {vaddr:#x} in {pagemap.name}")


def huge_page_at(img, pid, key, regions, region):
    """Where, in which page image, the middle page of a region is stored."""
    if region in HUGE_PRIVATE:
        addr, length = regions[region]
        return page_offset(img / f"pagemap-{pid}.img", key, addr + length // 2 + 4096)
    files = {m["name"]: m["shmid"] for m in crit_decode(img / "memfd.img", key) if "name" in m}
    shmid = files[HUGE_SHARED[region]]
    return page_offset(img / f"pagemap-shmem-{shmid}.img", key, (1 << 20) + 4096)


def test_hugetlb_canaries_absent_and_restored(hugecanary, criu, tmp_path, keys):
    # Plain: each hugetlb region's canary is in a page image.
    wl, canary, _ = hugecanary("plain")
    criu.dump(wl, tmp_path / "plain")
    pages = [p.read_bytes() for p in page_images(tmp_path / "plain")]
    for region in HUGE_REGIONS:
        needle = f"{canary}-{region}".encode()
        assert any(needle in p for p in pages), f"plain dump: no {region} canary in the page images"
    del pages
    shutil.rmtree(tmp_path / "plain")

    wl, canary, regions = hugecanary("enc")
    img = tmp_path / "enc"
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0])
    assert files_with(img, canary.encode()) == []
    assert files_with(tmp_path, canary.encode()) in ([], ["hugecanary.log"]), "a canary in the work dir"
    criu.restore(img, "--tls-key", keys["alice"][1])
    # The private hugetlb VMAs went to the restorer through the memfd of
    # checked pages, nothing else did (every other private VMA is premapped).
    log = (img / "restore.log").read_text()
    checked = sorted((int(a, 16), int(b, 16)) for a, b in
                     re.findall(r"criusec: checking (0x[0-9a-f]+)-(0x[0-9a-f]+) ", log))
    merged = []
    for a, b in checked:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    want = sorted((regions[r][0], regions[r][0] + regions[r][1]) for r in HUGE_PRIVATE)
    assert merged == want, f"checked for the restorer: {[(hex(a), hex(b)) for a, b in merged]}"
    total = sum(regions[r][1] for r in HUGE_PRIVATE)
    assert f"criusec: {total} bytes of pages the restorer reads checked into a memfd" in log
    # The workload compares every byte of every region (and the file under
    # the private map) with what it wrote.
    assert wl.report() == "hugecanary OK 0"


@pytest.fixture
def hugepristine(hugecanary, criu, tmp_path, keys):
    wl, _, regions = hugecanary("mem_pristine")
    img = tmp_path / "mem_pristine"
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0])
    return wl, img, regions


@pytest.mark.parametrize("region", HUGE_REGIONS)
def test_refuses_flipped_bit_in_hugetlb_page(hugepristine, criu, tmp_path, keys, region):
    wl, img, regions = hugepristine
    name, off = huge_page_at(img, wl.pid, keys["alice"][1], regions, region)
    d = damaged_copy(tmp_path, img, "flip-" + region)
    flip_in(d / name, off + 777)
    log = refused(criu, d, wl.pid, keys["alice"][1], f"{name}: page")
    assert "failed authentication" in log
    if region in HUGE_PRIVATE:
        assert "criusec: can't check the pages the restorer reads" in log
        assert "checked into a memfd" not in log
    else:
        assert "Can't read the pages of shmem" in log
    assert "pie: " not in log, "the restorer ran"
    # The mem_pristine checkpoint still restores.
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "hugecanary OK 0"


def is_hole(path, off, length):
    """No data in [off, off + length) of the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, off, os.SEEK_DATA) >= off + length
    except OSError:  # ENXIO: no data at or after off
        return True
    finally:
        os.close(fd)


def test_hugetlb_auto_dedup_restore(hugepristine, criu, tmp_path, keys):
    """--auto-dedup punches what restore has read out of the images, the
    private hugetlb pages included (the restorer punches only its memfd)."""
    wl, img, regions = hugepristine
    where = {r: huge_page_at(img, wl.pid, keys["alice"][1], regions, r) for r in HUGE_PRIVATE}
    for name, off in where.values():
        assert not is_hole(img / name, off, 4096)
    criu.restore(img, "--auto-dedup", "--tls-key", keys["alice"][1])
    assert wl.report() == "hugecanary OK 0"
    for region, (name, off) in where.items():
        assert is_hole(img / name, off, 4096), f"{region}: its pages are still in {name} after --auto-dedup"


@pytest.mark.parametrize("compress", [False, True], ids=["encrypt", "encrypt-compress"])
def test_a_full_disk_fails_the_dump_cleanly(workloads, criu, keys, tmp_path, compress):  # noqa: F811
    """Pages are written behind CRIU (issue 18): a write that fails after the
    call that handed its pages over still fails the dump, with the reason,
    and the task runs on unchanged; the same task then dumps and restores."""
    if os.geteuid() != 0:
        pytest.skip("needs root (criu dump, mount)")
    wl = workloads("memory", 48)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(full)], check=True)
    try:
        args = ["--encrypt", "--tls-cert", keys["alice"][0]] + (["--compress"] if compress else [])
        # The log goes elsewhere: it must not be what fills the disk.
        r = subprocess.run([CRIU, "dump", "-t", str(wl.pid), "-D", str(full), "-o", str(tmp_path / "full.log"),
                            "-v4", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        log = (tmp_path / "full.log").read_text()
        assert r.returncode != 0, log[-3000:]
        assert "No space left on device" in log, log[-3000:]
        assert not (full / "cipher.img").exists()
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert wl.report() == f"memory OK {48 << 20}"
    img = tmp_path / "img"
    criu.dump(wl, img, *args)
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memory OK {48 << 20}"
