"""Attacker: someone who can read and rewrite the images on disk (a
shared volume, a registry, a backup) but holds no recipient's key.  Each
change is refused by criu restore, naming what is wrong, before any task
runs, with no task left and no image changed; the genuine checkpoint still
restores.

- reading without the key, or with another key;
- cipher.img removed; any image flipped, truncated, removed, renamed, taken
  from another checkpoint, or replaced by a plaintext one;
- memory pages flipped, swapped, taken from another dump of the process,
  shared memory pages flipped;
- names in the manifest that are paths (../fifo, /etc/shadow), links,
  FIFOs; a sparse 4 GiB image (verification stays bounded); a pagemap that
  does not cover exactly its tagged pages; a refused --auto-dedup restore
  that would have punched pages already.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import (CRIU, PLAINTEXT_BY_DESIGN, biggest_pages, crit_decode, damaged_copy, edit_manifest,
                     encrypted_dump, flip_in, genuine, new_canary, refused, restore_refused, restored, wait_gone)
from pycriu import criusec  # helpers puts build/src/lib on sys.path


@pytest.fixture
def pristine(workloads, criu, tmp_path, keys):
    wl, _, img = encrypted_dump(workloads, criu, tmp_path, keys, name="pristine")
    return wl, img


def image_names(img):
    return sorted(p.name for p in img.iterdir()
                  if p.is_file() and not p.name.endswith(".log") and p.name not in PLAINTEXT_BY_DESIGN)


def test_refuses_without_key(pristine, criu, tmp_path):
    wl, img = pristine
    d = damaged_copy(tmp_path, img, "nokey")
    refused(criu, d, wl.pid, "/nonexistent/key.pem", "pass the private key with --tls-key")


def test_refuses_wrong_key(pristine, criu, tmp_path, keys):
    wl, img = pristine
    d = damaged_copy(tmp_path, img, "wrongkey")
    refused(criu, d, wl.pid, keys["mallory"][1], "no recipient")


def test_refuses_without_cipher_img(pristine, criu, tmp_path, keys):
    wl, img = pristine
    d = damaged_copy(tmp_path, img, "nocipher")
    (d / "cipher.img").unlink()
    refused(criu, d, wl.pid, keys["alice"][1], "no cipher.img beside it")


def test_refuses_each_flipped_image(pristine, criu, tmp_path, keys):
    wl, img = pristine
    names = image_names(img) + ["cipher.img"]
    assert len(names) > 10
    for name in names:
        d = damaged_copy(tmp_path, img, "flip-" + name)
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0x10
        (d / name).write_bytes(bytes(data))
        refused(criu, d, wl.pid, keys["alice"][1], name)
        shutil.rmtree(d)


def test_refuses_each_truncated_image(pristine, criu, tmp_path, keys):
    wl, img = pristine
    for name in image_names(img):
        d = damaged_copy(tmp_path, img, "cut-" + name)
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:len(data) * 3 // 4])
        refused(criu, d, wl.pid, keys["alice"][1], name)
        shutil.rmtree(d)


def test_refuses_each_removed_image(pristine, criu, tmp_path, keys):
    wl, img = pristine
    for name in image_names(img):
        d = damaged_copy(tmp_path, img, "rm-" + name)
        (d / name).unlink()
        refused(criu, d, wl.pid, keys["alice"][1], name)
        shutil.rmtree(d)


def test_refuses_images_from_another_checkpoint(pristine, workloads, criu, tmp_path, keys):
    wl, img = pristine
    wl2, _, other = encrypted_dump(workloads, criu, tmp_path, keys, name="other")
    # Same pid-free image names in both: the checkpoint-wide ones.
    for name in ("pstree.img", "inventory.img", "pipes-data.img", "files.img"):
        d = damaged_copy(tmp_path, img, "swap-" + name)
        shutil.copy(other / name, d / name)
        refused(criu, d, wl.pid, keys["alice"][1], name)
        shutil.rmtree(d)


def test_refuses_renamed_image(pristine, criu, tmp_path, keys):
    wl, img = pristine
    d = damaged_copy(tmp_path, img, "rename")
    # fifo-data and pipes-data are both raw data images of one process.
    shutil.copy(d / "pipes-data.img", d / "fifo-data.img")
    refused(criu, d, wl.pid, keys["alice"][1], "fifo-data.img")


def test_refuses_plaintext_substitute(pristine, workloads, criu, tmp_path, keys):
    wl, img = pristine
    wl2 = workloads("secrets", env={"CANARY": new_canary()})
    criu.dump(wl2, tmp_path / "plain")
    d = damaged_copy(tmp_path, img, "plainsub")
    shutil.copy(tmp_path / "plain" / "pstree.img", d / "pstree.img")
    # Format 2: the manifest records pstree.img's size, so the substitute is refused unread.
    log = refused(criu, d, wl.pid, keys["alice"][1], "but the dump wrote")
    assert "pstree.img: " in log.split("but the dump wrote")[0].splitlines()[-1]


def test_pristine_still_restores_after_refusals(pristine, criu, keys):
    wl, img = pristine
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_refuses_flipped_bit_in_pages(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    name = biggest_pages(img)
    d = damaged_copy(tmp_path, img, "flip")
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2 + 123] ^= 0x04
    (d / name).write_bytes(bytes(data))
    log = refused(criu, d, wl.pid, keys["alice"][1], name)
    assert "failed authentication" in log


def test_refuses_swapped_pages(mem_pristine, criu, tmp_path, keys):
    wl, img = mem_pristine
    name = biggest_pages(img)
    d = damaged_copy(tmp_path, img, "swap")
    data = bytearray((d / name).read_bytes())
    assert len(data) >= 2 * 4096
    data[0:4096], data[4096:8192] = data[4096:8192], data[0:4096]
    (d / name).write_bytes(bytes(data))
    log = refused(criu, d, wl.pid, keys["alice"][1], name)
    assert "failed authentication" in log


def test_refuses_flipped_bit_in_shared_memory_pages(mem_pristine, criu, tmp_path, keys):
    """Pages of MAP_SHARED anonymous memory, a memfd and a SysV segment are
    restored by criu itself (shmem.c), not in the task: a page that fails
    its tag there must fail the restore too, not leave the memory zeroed
    and the restore going on (it did, before shmem.c checked read_pages())."""
    wl, img = mem_pristine
    shmem = sorted(img.glob("pagemap-shmem-*.img"))
    assert len(shmem) == 3, [p.name for p in shmem]  # shared, memfd, sysv
    for pm in shmem:
        entries = crit_decode(pm, keys["alice"][1])
        name = f"pages-{entries[0]['pages_id']}.img"
        d = damaged_copy(tmp_path, img, "flip-" + pm.stem)
        flip_in(d / name, (entries[1]["nr_pages"] * 4096) // 2 + 99)
        log = refused(criu, d, wl.pid, keys["alice"][1], f"{name}: page")
        assert "failed authentication" in log and "Can't read the pages of shmem" in log, log[-3000:]
        assert "pie: " not in log, "the restorer ran"


def test_refuses_pages_of_another_dump_of_the_same_process(memcanary, criu, tmp_path, keys):
    wl, _ = memcanary("twice")
    a, b = tmp_path / "a", tmp_path / "b"
    criu.run("dump", a, "-t", wl.pid, "--leave-running", "--encrypt", "--tls-cert", keys["alice"][0])
    criu.dump(wl, b, "--encrypt", "--tls-cert", keys["alice"][0])
    name = biggest_pages(a)
    assert (b / name).exists()
    # The pages alone, then the pages with their tags.
    d = damaged_copy(tmp_path, a, "other-pages")
    shutil.copy(b / name, d / name)
    refused(criu, d, wl.pid, keys["alice"][1], name)
    tags = "pagetags-" + name[len("pages-"):]
    d = damaged_copy(tmp_path, a, "other-pages-and-tags")
    shutil.copy(b / name, d / name)
    shutil.copy(b / tags, d / tags)
    refused(criu, d, wl.pid, keys["alice"][1], tags)
    # Both dumps themselves are sound.
    criu.restore(a, "--tls-key", keys["alice"][1])
    assert wl.report() == "memcanary OK 0"


@pytest.mark.parametrize("attack", ["../fifo", "/etc/shadow", "symlink", "fifo"])
def test_manifest_names_are_not_paths(memcanary, criu, tmp_path, keys, attack):
    wl, _, img = genuine(memcanary, criu, tmp_path, keys)
    keep = tmp_path / "keep"
    shutil.copytree(img, keep)
    os.mkfifo(tmp_path / "fifo")
    core = next(p.name for p in img.glob("core-*.img"))
    pid = int(core[5:-4])
    name = {"../fifo": "../fifo", "/etc/shadow": "/etc/shadow"}.get(attack, f"core-{pid + 1}.img")
    if attack == "symlink":
        os.symlink("/etc/shadow", img / name)
    elif attack == "fifo":
        os.mkfifo(img / name)

    def add(entries):
        n, k, size, digest = next(e for e in entries if e[0] == core)[:4]
        return entries + [(name, k, size, digest)]
    edit_manifest(img, keys["alice"][1], add)
    t = time.monotonic()
    expect = {"../fifo": "not an image name of the kind", "/etc/shadow": "not an image name of the kind",
              "symlink": "Too many levels of symbolic links", "fifo": "not a regular file"}[attack]
    restore_refused(criu, img, wl.pid, "--tls-key", keys["alice"][1], expect=[expect])
    assert time.monotonic() - t < 60, "the restore blocked"
    shutil.rmtree(img)
    shutil.copytree(keep, img)
    restored(criu, wl, img, keys)


# Run by a small python of its own: a process spawned from pytest starts its
# ru_maxrss at pytest's own high-water mark (vfork, then exec), which earlier
# tests in the same session raise (test_pages.py reads 256 MiB images).
PEAK_RSS = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(cmd, cwd):
    """(exit code, peak RSS in KiB) of cmd, measured from a process of its own."""
    r = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, cmd)], cwd=cwd, capture_output=True, text=True,
                       check=True, timeout=300)
    code, rss = map(int, r.stdout.split())
    return code, rss


def test_a_sparse_giant_is_refused_unread(memcanary, criu, tmp_path, keys):
    wl, _, img = genuine(memcanary, criu, tmp_path, keys)
    victim = next(img.glob("mm-*.img"))
    keep = victim.read_bytes()
    with open(victim, "r+b") as f:
        f.truncate(4 << 30)
    code, maxrss = peak_rss([CRIU, "restore", "-D", str(img), "-o", "restore.log", "-v4", "-d", "--tls-key",
                             keys["alice"][1]], tmp_path)
    log = (img / "restore.log").read_text()
    assert code != 0
    assert f"{victim.name}: 4294967296 bytes, but the dump wrote" in log, log[-2000:]
    assert maxrss < 256 << 10, f"criu grew to {maxrss} KiB refusing it"
    wait_gone([wl.pid])
    victim.write_bytes(keep)
    restored(criu, wl, img, keys)


def test_a_pagemap_must_cover_exactly_its_tagged_pages(memcanary, criu, tmp_path, keys):
    """A key holder's edit, sealed consistently (manifest, header): a pagemap
    that lost an entry no longer covers the pages its image has tags for.
    criu restore and pycriu refuse it."""
    wl, _, img = genuine(memcanary, criu, tmp_path, keys)
    keep = tmp_path / "keep"
    shutil.copytree(img, keep)
    from pycriu import images
    ck = criusec.Checkpoint(img, keys=keys["alice"][1])
    name = f"pagemap-{wl.pid}.img"
    pm = images.loads(ck.read(name))
    present = [i for i, e in enumerate(pm["entries"][1:], 1) if e.get("flags", 0) & criusec.PE_PRESENT]
    del pm["entries"][present[0]]
    pt = images.dumps(pm)
    h = ck.header
    sealed = criusec.stream_seal(ck.mk, h["ckpt_id"], h["aead"], h["chunk_size"], ck.kind_of(name), name, pt)
    (img / name).write_bytes(sealed)
    edit_manifest(img, keys["alice"][1], lambda es: [(n, k, len(sealed), hashlib.sha256(pt).digest()) if n == name
                                                     else (n, k, sz, d) for n, k, sz, d in es])
    with pytest.raises(criusec.FormatError, match=f"{name}: covers .* pages, but pagetags-.* holds .* tags"):
        criusec.Checkpoint(img, keys=keys["alice"][1]).verify()
    restore_refused(criu, img, wl.pid, "--tls-key", keys["alice"][1], expect=[f"{name}: covers"])
    restored(criu, wl, keep, keys)


def test_refused_auto_dedup_restore_punches_nothing(memcanary, criu, tmp_path, keys):
    wl, _, img = genuine(memcanary, criu, tmp_path, keys)
    name = max(img.glob("pages-*.img"), key=lambda p: p.stat().st_size).name
    data = bytearray((img / name).read_bytes())
    good = bytes(data)
    # The last page: every page before it is read (and checked) first.
    data[-100] ^= 0x40
    (img / name).write_bytes(bytes(data))
    blocks = {p.name: p.stat().st_blocks for p in img.glob("pages-*.img")}
    restore_refused(criu, img, wl.pid, "--tls-key", keys["alice"][1], "--auto-dedup", expect=["failed authentication"])
    assert {p.name: p.stat().st_blocks for p in img.glob("pages-*.img")} == blocks, "pages were punched"
    (img / name).write_bytes(good)
    restored(criu, wl, img, keys, "--auto-dedup")
    assert (img / name).stat().st_blocks < len(good) // 512, "a successful restore punched nothing"
