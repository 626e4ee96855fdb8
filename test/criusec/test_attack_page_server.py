"""Attacker: a malicious page server, which receives an encrypted dump's
pages (criu dump --page-server) and keeps them without the key.  What it
writes is refused at restore: a tampered page or pagemap, a pagemap it
rewrote and sealed again, images it did not keep.
"""
import shutil

import pytest

from helpers import (damaged_copy, dump_through_page_server, enc_args, flip_a_page, merged, refused, restore_refused,
                     restored)
from pycriu import criusec  # helpers puts build/src/lib on sys.path


def test_page_server_cannot_rewrite_the_pagemaps_it_sealed(memcanary, criu, tmp_path, keys):
    # SysV shm cannot go through a TLS page server in upstream CRIU (see test_pages.py).
    wl, canary = memcanary("ps", sysv=False)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "ps", *enc_args(keys))
    assert r.returncode == 0, r.stderr
    img = merged(tmp_path / "ps", srv, dump)
    keep = tmp_path / "keep"
    shutil.copytree(img, keep)

    # The page server held the key of each pagemap it sealed (the grant):
    # it drops an entry of one and seals it again.
    ck = criusec.Checkpoint(img, keys=keys["alice"][1])
    ck.unlock()
    h = ck.header
    from pycriu import images
    victims = sorted(p.name for p in srv.glob("pagemap-*.img"))
    assert victims, "the page server wrote no pagemap"
    name = max(victims, key=lambda n: len(ck.pagemap(n)[1]))
    pm = images.loads(ck.read(name))
    assert len(pm["entries"]) > 2
    del pm["entries"][1]
    (img / name).write_bytes(criusec.stream_seal(ck.mk, h["ckpt_id"], h["aead"], h["chunk_size"], ck.kind_of(name),
                                                 name, images.dumps(pm)))
    restore_refused(criu, img, wl.pid, "--tls-key", keys["alice"][1],
                    expect=[f"{name}: its entries are not the ones the dump sent the page server"])
    restored(criu, wl, keep, keys)


@pytest.fixture
def ps_pristine(memcanary, criu, tmp_path, keys):
    wl, _ = memcanary("ps-mem_pristine", sysv=False)
    r, srv, dump = dump_through_page_server(criu, wl, tmp_path, keys, "mem_pristine", "--encrypt")
    assert r.returncode == 0, (dump / "dump.log").read_text()[-3000:]
    return wl, merged(tmp_path / "mem_pristine", srv, dump)


def test_page_server_dump_tampered_page_refused(ps_pristine, criu, tmp_path, keys):
    wl, img = ps_pristine
    d = damaged_copy(tmp_path, img, "flip")
    name = flip_a_page(d)
    refused(criu, d, wl.pid, keys["alice"][1], f"{name}: page")


def test_page_server_dump_tampered_pagemap_refused(ps_pristine, criu, tmp_path, keys):
    wl, img = ps_pristine
    d = damaged_copy(tmp_path, img, "pagemap")
    pm = max((p for p in d.iterdir() if p.name.startswith("pagemap-")), key=lambda p: p.stat().st_size)
    data = bytearray(pm.read_bytes())
    data[40] ^= 0x01
    pm.write_bytes(bytes(data))
    refused(criu, d, wl.pid, keys["alice"][1], f"{pm.name}: chunk 0 failed authentication")


def test_page_server_dump_without_its_images_refused(ps_pristine, criu, tmp_path, keys):
    """The dump's manifest lists the pagemaps the page server wrote."""
    wl, img = ps_pristine
    d = damaged_copy(tmp_path, img, "nopagemap")
    pm = next(p for p in d.iterdir() if p.name.startswith("pagemap-"))
    pm.unlink()
    refused(criu, d, wl.pid, keys["alice"][1], f"{pm.name}: missing from the encrypted checkpoint")
