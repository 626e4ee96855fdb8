"""--compress: images compressed before they are encrypted (criusec format,
section 11).  Memory of a heap of records shrinks several times and comes
back byte for byte; canaries reach no file; every page and stream path
(shared memory, memfd, SysV, pipes, sockets, ghost files, dedup, lazy pages,
the page server) works on compressed checkpoints; compressed regions that
were flipped, swapped, moved, cut or taken from another checkpoint are
refused before any task runs; crit and pycriu read them."""
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import CRIU, REPO
from test_encrypt import damaged_copy, keys, new_canary, refused  # noqa: F401 (keys is a fixture)
from test_pages import (BIG_MIB, REGIONS, biggest_pages, files_with, lazy_restore, lazy_restored,  # noqa: F401
                        memcanary, memcanary_bin, needs_uffd, page_images)

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
