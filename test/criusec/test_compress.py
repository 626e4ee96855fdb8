"""--compress: images compressed before they are encrypted (criusec format,
section 11).  Memory of a heap of records shrinks several times and comes
back byte for byte; canaries reach no file; every page and stream path
(shared memory, memfd, SysV, pipes, sockets, ghost files, dedup, lazy pages,
the page server) works on compressed checkpoints; compressed regions that
were flipped, swapped, moved, cut or taken from another checkpoint are
refused before any task runs; crit and pycriu read them."""
import pathlib
import shutil
import struct
import sys

import pytest
from helpers import (REPO, biggest_pages, bind_to_parent, damaged_copy, dump_through_page_server, files_with,
                     lazy_restore, lazy_restored, merged, needs_uffd, new_canary, page_images, refused,
                     remote_lazy_restore, run_crit)


ALGS = ("zstd", "lz4")
RECORDS_MIB = 32


def pycriu():
    sys.path.insert(0, str(REPO / "build" / "src" / "lib"))
    from pycriu import criusec
    return criusec


def dir_size(img, prefix=""):
    return sum(p.stat().st_size for p in pathlib.Path(img).iterdir() if p.is_file() and p.name.startswith(prefix)
               and not p.name.endswith(".log"))


def header(img):
    return pycriu().read_cipher_img(str(img / "cipher.img"))


def enc(keys, *more):
    return ("--encrypt", "--tls-cert", keys["alice"][0], *more)


def records(workloads, tag, mib=RECORDS_MIB):
    canary = new_canary()
    wl = workloads("records", str(mib), env={"CANARY": canary})
    assert wl.report() == f"records OK {mib << 20}"
    return wl, canary


@pytest.mark.parametrize("alg", ALGS)
def test_records_compressed_round_trip(workloads, criu, tmp_path, keys, alg):
    wl, canary = records(workloads, "plain")
    criu.run("dump", tmp_path / "plain", "-t", wl.pid, "--leave-running")
    assert files_with(tmp_path / "plain", canary.encode()), "the plain dump holds no canary: the test is void"
    plain = dir_size(tmp_path / "plain", "pages-")
    criu.dump(wl, tmp_path / "img", *enc(keys, "--compress", "--compress-alg", alg))
    img = tmp_path / "img"
    assert files_with(img, canary.encode()) == []
    assert header(img)["compress"] == {"lz4": 1, "zstd": 2}[alg]
    pages = dir_size(img, "pages-")
    # Records compress 3-5 times, zeroed buffers to nothing; a tenth of the heap is random.
    assert pages < plain * 0.45, f"{alg}: page images {pages} bytes of {plain}"
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == f"records OK {RECORDS_MIB << 20}"


def test_compress_needs_encrypt(workloads, criu, tmp_path):
    wl = workloads("counter")
    wl.report()
    r = criu.run("dump", tmp_path / "img", "-t", wl.pid, "--compress", check=False)
    assert r.returncode != 0
    assert "--compress needs --encrypt" in (tmp_path / "img" / "dump.log").read_text()
    assert wl.report().startswith("counter"), "the task did not carry on"


def test_unknown_compress_alg_refused(workloads, criu, tmp_path, keys):
    wl = workloads("counter")
    wl.report()
    r = criu.run("dump", tmp_path / "img", "-t", wl.pid, *enc(keys, "--compress", "--compress-alg", "gzip"),
                 check=False)
    assert r.returncode != 0
    assert "unknown compression algorithm 'gzip'" in (tmp_path / "img" / "dump.log").read_text()


def doc_hex(section, label):
    """The hex after `label` in a section of criusec-format.md (continued on indented lines)."""
    doc = (REPO / "Documentation" / "criusec-format.md").read_text()
    text = doc[doc.index(section):]
    lines = text[text.index(label):].split("\n")
    out = lines[0].split("=", 1)[1].split("(")[0].strip() if "=" in lines[0] else ""
    for line in lines[1:]:
        if not line.startswith(" ") or "(" in line:
            break
        out += line.strip()
    return bytes.fromhex(out)


def test_section_11_vectors_open():
    """The documented region and compressed stream open, with the reference
    reader, to the documented plaintext; one bit off anywhere is refused."""
    criusec = pycriu()
    pytest.importorskip("lz4")
    mk, ckpt = bytes(range(32)), bytes(range(0x10, 0x20))
    prk = criusec.prk_of(mk, ckpt)
    assert criusec.derive(prk, b"criusec v1 pages region\x00pages-1.img", 32) == \
        doc_hex("### 11.4", "region_key")
    pc = criusec.PageCipher(prk, "pages-1.img", ckpt, 1, 1)
    assert pc.region_aad(0x7f0000001000, 64, 1) == doc_hex("### 11.4", "AAD")
    stored = doc_hex("### 11.4", "stored")
    page = (b"criusec region test vector\n" * 152)[:4096]
    assert pc.open_region(1, 0x7f0000001000, 64, 1, stored) == page
    for r, vaddr, first in ((0, 0x7f0000001000, 64), (1, 0x7f0000002000, 64), (1, 0x7f0000001000, 65)):
        with pytest.raises(criusec.FormatError, match="failed authentication"):
            pc.open_region(r, vaddr, first, 1, stored)
    doc = (REPO / "Documentation" / "criusec-format.md").read_text()
    sec = doc[doc.index("A compressed stream: section 5's inputs"):]
    block = sec[sec.index("```") + 3:]
    stream = bytes.fromhex("".join(block[:block.index("```")].split()))
    assert stream[11] == 1
    pt = criusec.stream_open(mk, ckpt, 1, 4096, b"core", b"core-1.img", stream, 1)
    assert pt == b"criusec test vector\n" * 300
    with pytest.raises(criusec.FormatError, match="compression 1 in a checkpoint without compression"):
        criusec.stream_open(mk, ckpt, 1, 4096, b"core", b"core-1.img", stream, 0)
    bad = bytearray(stream)
    bad[11] = 2
    with pytest.raises(criusec.FormatError):
        criusec.stream_open(mk, ckpt, 1, 4096, b"core", b"core-1.img", bytes(bad), 2)


# ---- every page path ----

@pytest.fixture
def zpristine(memcanary, criu, tmp_path, keys):
    """A compressed dump of the memcanary (heap, stack, MAP_SHARED, memfd, SysV; 16 MiB of random memory)."""
    wl, canary = memcanary("zpristine", 16)
    img = tmp_path / "zpristine"
    criu.dump(wl, img, *enc(keys, "--compress"))
    return wl, img, canary


def test_memory_canaries_compressed(zpristine, criu, keys):
    wl, img, canary = zpristine
    assert files_with(img, canary.encode()) == []
    h = header(img)
    assert h["compress"] == 2 and h["sig_alg"] == 0
    # Every stream image is compressed; page images are regions (no longer whole pages).
    for p in img.iterdir():
        if p.is_file() and p.read_bytes()[:8] == b"CRIUSEC\x01":
            assert p.read_bytes()[11] == 2, p.name
    assert any(p.stat().st_size % 4096 for p in page_images(img)), "no page image was compressed"
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 16"


def test_stream_canaries_compressed(workloads, criu, tmp_path, keys):
    """Pipe, socket and FIFO queues and a ghost file, in compressed streams."""
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    img = tmp_path / "img"
    criu.dump(wl, img, *enc(keys, "--compress", "--compress-alg", "lz4"))
    assert files_with(img, canary.encode()) == []
    streams = [p for p in img.iterdir() if p.is_file() and p.read_bytes()[:8] == b"CRIUSEC\x01"]
    assert len(streams) > 10 and all(p.read_bytes()[11] == 1 for p in streams)
    assert any(p.name.startswith("ghost-file") for p in streams) and any(p.name.startswith("pipes-data")
                                                                         for p in streams)
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def pages_of(img, key, pagemap_prefix="pagemap-"):
    """(pages image, pagetags name, regions) of the biggest page image."""
    criusec = pycriu()
    ck = criusec.Checkpoint(img, keys=key)
    name = biggest_pages(img)
    pid = int(name[len("pages-"):-len(".img")])
    regions = criusec.parse_regions(ck.read("pagetags-%d.img" % pid))
    return name, regions


def test_auto_dedup_restore_compressed(zpristine, criu, keys):
    wl, img, _ = zpristine
    name = biggest_pages(img)
    blocks = (img / name).stat().st_blocks
    criu.restore(img, "--auto-dedup", "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 16"
    assert (img / name).stat().st_blocks < blocks, "restore punched nothing"


@needs_uffd
def test_lazy_pages_compressed(zpristine, criu, tmp_path, keys):
    wl, img, _ = zpristine
    r, daemon = lazy_restore(criu, img, keys["alice"][1], tmp_path)
    try:
        lazy_restored(wl, img, r, daemon, "memcanary OK 16")
    finally:
        daemon.kill()


def test_crit_and_pycriu_read_compressed(workloads, criu, tmp_path, keys):
    wl, canary = records(workloads, "crit", 8)
    img = tmp_path / "img"
    criu.dump(wl, img, *enc(keys, "--compress"))
    code, out, err = run_crit("x", img, "ps", "--tls-key", keys["alice"][1])
    assert code == 0 and str(wl.pid) in out, err
    code, out, err = run_crit("info", img, "--tls-key", keys["alice"][1])
    assert code == 0 and '"compress": "zstd"' in out, out
    criusec = pycriu()
    ck = criusec.Checkpoint(img, keys=keys["alice"][1])
    assert ck.verify() > 5
    # Every page read at random through the regions, entry by entry: the canary is 64 bytes
    # into each MiB of the 8 MiB heap (how criu cuts that mapping into entries varies: 1024 +
    # 1024, or 1023 + 1024 + 1), and in the environment.
    pages_id, pm = ck.pagemap("pagemap-%d.img" % wl.pid)
    found = sum(ck.read_memory(wl.pid, vaddr, nr * 4096).count(canary.encode())
                for vaddr, nr, flags in pm if flags & criusec.PE_PRESENT and not flags & criusec.PE_PARENT)
    assert found >= 8, pm
    assert len(ck.pages_image(pages_id)) >= 8 << 20
    wl.kill()


# ---- tampering with compressed regions ----

@pytest.fixture
def zrecords(workloads, criu, tmp_path, keys):
    wl, _ = records(workloads, "ztamper", 8)
    img = tmp_path / "zrecords"
    criu.dump(wl, img, *enc(keys, "--compress"))
    return wl, img


def split_regions(img, name, key):
    """[(record, bytes)] of a page image, from its pagetags records."""
    criusec = pycriu()
    tname = "pagetags-" + name[len("pages-"):]
    idx = criusec.Checkpoint(img, keys=key).read(tname)
    data = (img / name).read_bytes()
    out = []
    for first, n, stored, off, tags in criusec.parse_regions(idx):
        size = stored or n * 4096
        out.append((struct.pack(">II", n, stored) + tags, data[off:off + size]))
    return out


def rewrite_regions(img, name, key, regions):
    """What a key holder can do: write the page image and its records, seal
    the records again and the checkpoint (unsigned, as the dump was)."""
    criusec = pycriu()
    ck = criusec.Checkpoint(img, keys=key)
    (img / name).write_bytes(b"".join(b for _, b in regions))
    ck.write_image("pagetags-" + name[len("pages-"):], b"".join(r for r, _ in regions))
    ck.reseal()


def compressed_indexes(regions, min_stored=1):
    """The compressed regions (stored bytes, not XTS pages) of at least min_stored bytes."""
    return [i for i, (r, _) in enumerate(regions) if struct.unpack(">II", r[:8])[1] >= min_stored]


def test_refuses_flipped_byte_in_a_compressed_region(zrecords, criu, tmp_path, keys):
    wl, img = zrecords
    name = biggest_pages(img)
    regions = split_regions(img, name, keys["alice"][1])
    i = compressed_indexes(regions)[3]
    off = sum(len(b) for _, b in regions[:i]) + len(regions[i][1]) // 2
    d = damaged_copy(tmp_path, img, "zflip")
    data = bytearray((d / name).read_bytes())
    data[off] ^= 0x20
    (d / name).write_bytes(bytes(data))
    log = refused(criu, d, wl.pid, keys["alice"][1], f"region {i} ")
    assert "failed authentication" in log and "pie: " not in log


def test_refuses_swapped_compressed_regions(zrecords, criu, tmp_path, keys):
    """Even by a key holder who rewrites the records to match."""
    wl, img = zrecords
    name = biggest_pages(img)
    d = damaged_copy(tmp_path, img, "zswap")
    regions = split_regions(d, name, keys["alice"][1])
    i, j = compressed_indexes(regions)[2:4]
    regions[i], regions[j] = regions[j], regions[i]
    rewrite_regions(d, name, keys["alice"][1], regions)
    log = refused(criu, d, wl.pid, keys["alice"][1], "failed authentication")
    assert f"region {min(i, j)} " in log


def test_refuses_region_moved_to_another_address(zrecords, criu, tmp_path, keys):
    """The last compressed region of the heap put in place of the first
    compressed region of another mapping (another address), records too."""
    wl, img = zrecords
    name = biggest_pages(img)
    crit = pycriu().Checkpoint(img, keys=keys["alice"][1])
    entries = crit.pagemap("pagemap-%d.img" % wl.pid)[1]
    d = damaged_copy(tmp_path, img, "zmove")
    regions = split_regions(d, name, keys["alice"][1])
    comp = compressed_indexes(regions)
    # Page number of each region's first page, and which pagemap run it is in.
    firsts, f = [], 0
    for r, _ in regions:
        firsts.append(f)
        f += struct.unpack(">I", r[:4])[0]
    runs, p = [], 0
    for vaddr, nr, flags in entries:
        if flags & 4 and not flags & 1:
            runs.append((p, p + nr, vaddr))
            p += nr
    run_of = {i: next(k for k, (a, b, _) in enumerate(runs) if a <= firsts[i] < b) for i in comp}
    big = max(range(len(runs)), key=lambda k: runs[k][1] - runs[k][0])
    src = [i for i in comp if run_of[i] == big][-1]
    dst = next(i for i in comp if run_of[i] != big and
               struct.unpack(">I", regions[i][0][:4])[0] == struct.unpack(">I", regions[src][0][:4])[0])
    regions[dst] = regions[src]
    rewrite_regions(d, name, keys["alice"][1], regions)
    log = refused(criu, d, wl.pid, keys["alice"][1], f"region {dst} ")
    assert "failed authentication" in log


def test_refuses_truncated_region(zrecords, criu, tmp_path, keys):
    wl, img = zrecords
    name = biggest_pages(img)
    # Without a key: the file cut short.
    d = damaged_copy(tmp_path, img, "zcut")
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[:-100])
    refused(criu, d, wl.pid, keys["alice"][1], "truncated or extended")
    # A key holder cuts a region and its record to match.
    d = damaged_copy(tmp_path, img, "zcut2")
    regions = split_regions(d, name, keys["alice"][1])
    i = compressed_indexes(regions, 100)[1]  # one that can lose 50 bytes
    rec, b = regions[i]
    n, stored = struct.unpack(">II", rec[:8])
    regions[i] = (struct.pack(">II", n, stored - 50), b[:-50])
    rewrite_regions(d, name, keys["alice"][1], regions)
    log = refused(criu, d, wl.pid, keys["alice"][1], f"region {i} ")
    assert "failed authentication" in log


def test_refuses_regions_of_another_checkpoint(workloads, criu, tmp_path, keys):
    wl, _ = records(workloads, "ztwice", 8)
    a, b = tmp_path / "a", tmp_path / "b"
    criu.run("dump", a, "-t", wl.pid, "--leave-running", *enc(keys, "--compress"))
    criu.dump(wl, b, *enc(keys, "--compress"))
    name = biggest_pages(a)
    tags = "pagetags-" + name[len("pages-"):]
    d = damaged_copy(tmp_path, a, "zother")
    shutil.copy(b / name, d / name)
    refused(criu, d, wl.pid, keys["alice"][1], name)
    d = damaged_copy(tmp_path, a, "zother-tags")
    shutil.copy(b / name, d / name)
    shutil.copy(b / tags, d / tags)
    refused(criu, d, wl.pid, keys["alice"][1], tags)
    criu.restore(a, "--tls-key", keys["alice"][1])
    assert wl.report() == "records OK %d" % (8 << 20)


def test_genuine_compressed_checkpoint_restores_after_refusals(zrecords, criu, tmp_path, keys):
    wl, img = zrecords
    d = damaged_copy(tmp_path, img, "zflip2")
    name = biggest_pages(d)
    data = bytearray((d / name).read_bytes())
    data[len(data) // 3] ^= 1
    (d / name).write_bytes(bytes(data))
    refused(criu, d, wl.pid, keys["alice"][1], "failed authentication")
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "records OK %d" % (8 << 20)


# ---- the page server, and dedup ----

@needs_uffd
def test_remote_lazy_pages_from_compressed_images(zpristine, criu, tmp_path, keys):
    """criu page-server --lazy-pages reads compressed regions at random for lazy-pages."""
    wl, img, _ = zpristine
    r, daemon, server = remote_lazy_restore(criu, img, keys["alice"][1], tmp_path)
    try:
        lazy_restored(wl, img, r, daemon, "memcanary OK 16")
    finally:
        daemon.kill()
        server.kill()


def test_dump_through_page_server_with_compress(workloads, criu, tmp_path, keys):
    """Pages through a page server are not compressed (it counts pages); the
    dump's own images are, and the whole restores."""
    wl, canary = records(workloads, "zps", 8)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "zps", "--encrypt", "--compress")
    assert r.returncode == 0, (dump / "dump.log").read_text()[-3000:]
    assert page_images(srv) and all(p.stat().st_size % 4096 == 0 for p in page_images(srv))
    for d in (srv, dump):
        assert not files_with(d, canary.encode())
    own = [p for p in dump.iterdir() if p.is_file() and p.read_bytes()[:8] == b"CRIUSEC\x01"]
    assert own and all(p.read_bytes()[11] == 2 for p in own), "the dump's streams are not compressed"
    img = merged(tmp_path / "zps", srv, dump)
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "records OK %d" % (8 << 20)


def test_dedup_of_a_compressed_parent(workloads, criu, tmp_path, keys):
    """criu dedup punches the compressed regions of the parent whose pages
    the child holds again (whole regions), and the child still restores."""
    wl, _ = records(workloads, "zdedup", 8)
    a, b = tmp_path / "a", tmp_path / "b"
    criu.run("dump", a, "-t", wl.pid, "--leave-running", *enc(keys, "--compress"))
    criu.dump(wl, b, *enc(keys, "--compress"))
    bind_to_parent(b, a, keys["alice"][1])
    name = biggest_pages(a)
    blocks = (a / name).stat().st_blocks
    criu.run("dedup", b, "--tls-key", keys["alice"][1])
    assert (a / name).stat().st_blocks < blocks * 0.5, "dedup punched few regions from the parent"
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == "records OK %d" % (8 << 20)
