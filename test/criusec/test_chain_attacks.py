"""The parent bound by key (format 2, section 10.5), on real dumps.

Pre-dump chains cannot be made on this kernel (no soft-dirty tracking), so
a chain is built from two full dumps of the same process, as pycriu can:
the child's pagemap marks its biggest memory region "in parent" (those
pages are dropped from the child's page image), and its header binds the
parent with the parent's key.  The genuine chain restores with the memory
intact, read from the parent.  Then an attacker's variants, each refused by
criu restore, crit and pycriu before any image of the parent is used, with
no task left and no file changed:

- a plaintext child (made and edited without any key) over the encrypted parent;
- a child forged with only the recipient's public certificate (it cannot
  compute the binding);
- a parent forged with the public certificate and the genuine parent's id;
- the genuine child re-pointed to another genuine checkpoint of the process.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, dir_digest, wait_gone


SRC = REPO / "build" / "src"
sys.path.insert(0, str(SRC / "lib"))
from pycriu import criusec  # noqa: E402

MIB = 16


def sign_args(k):
    return ["--sign-key", k[1], "--sign-cert", k[0]]


def dump(criu, wl, img, keys, *extra, leave_running=False):
    alice = keys["alice"]
    args = ["--encrypt", "--tls-cert", alice[0], *sign_args(alice), *extra]
    if leave_running:
        criu.run("dump", img, "-t", wl.pid, "--leave-running", *args)
    else:
        criu.dump(wl, img, *args)


def big_entries(ck, pagemap):
    """The biggest present pagemap entries (the workload's memory; CRIU cuts it into pieces)."""
    _, entries = ck.pagemap(pagemap)
    present = [e for e in entries if e[2] & criusec.PE_PRESENT and not e[2] & criusec.PE_PARENT]
    most = max(e[1] for e in present)
    return {e for e in present if e[1] == most}


def to_parent(ck, pagemap, moved):
    """Rewrite pagemap with the entries moved marked "in parent" (their pages leave the child)."""
    pages = dict(ck.pages(pagemap))
    _, entries = ck.pagemap(pagemap)
    ck.write_pages(pagemap, [(v, n, criusec.PE_PARENT if (v, n, f) in moved else f) for v, n, f in entries], pages)


def make_increment(child, parent, pid, key, signer=None, parent_ck=None, bind=True):
    """Turn the full dump `child` into an increment over `parent`: the biggest
    region of its memory is taken from the parent (where it must be the same).
    bind=False: only the pagemap edit and the link (a plaintext child)."""
    pm = f"pagemap-{pid}.img"
    ck = criusec.Checkpoint(child, keys=key)
    par = parent_ck or criusec.Checkpoint(parent, keys=key)
    moved = big_entries(ck, pm)
    if bind:
        for v, n, _ in moved:
            end = v + n * criusec.PAGE_SIZE
            assert dict(par.pages(pm, v, end)) == dict(ck.pages(pm, v, end)), "the memory changed between the dumps"
    to_parent(ck, pm, moved)
    if ck.encrypted:
        ck.reseal(signer=signer, parent=par if bind else None)
    link = pathlib.Path(child) / "parent"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(parent, child))
    return sum(n for _, n, _ in moved)


@pytest.fixture
def chain(workloads, criu, tmp_path, keys):
    """A genuine signed chain a <- b of one process (16 MiB of checked memory), and
    tmp_path/other, a third checkpoint of it."""
    wl = workloads("memory", MIB)
    a, b = tmp_path / "a", tmp_path / "b"
    dump(criu, wl, a, keys, leave_running=True)
    dump(criu, wl, tmp_path / "other", keys, leave_running=True)
    dump(criu, wl, b, keys)
    signer = criusec.Signer.from_files(keys["alice"][1], keys["alice"][0])
    moved = make_increment(b, a, wl.pid, keys["alice"][1], signer)
    assert moved * criusec.PAGE_SIZE >= (MIB << 20) // 2
    return wl, a, b, signer


def crit(*args):
    env = dict(os.environ, PYTHONPATH=f"{SRC / 'lib'}:{SRC / 'crit'}")
    return subprocess.run(["/usr/bin/python3", "-m", "crit", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def refused_everywhere(criu, img, pid, keys, expect, crit_expect):
    """criu restore (expect in its log), crit (crit_expect in its one-line
    error) and pycriu all refuse the chain ending in img."""
    alice = keys["alice"]
    dirs = [img, img / "parent"]
    before = {d: dir_digest(d) for d in dirs}
    r = criu.restore(img, "--tls-key", alice[1], check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, f"the chain was restored:\n{log[-3000:]}"
    assert expect in log, f"no {expect!r} in:\n{log[-3000:]}"
    # Only the child's images were read: the parent was refused on its header.
    assert log.count("images of the checkpoint authenticated") <= 1, log[-3000:]
    wait_gone([pid], timeout=10)
    c = crit("x", img, "mems", "--pid", pid, "--pages", "0-ffffffffffff", "--tls-key", alice[1])
    assert c.returncode != 0 and "Traceback" not in c.stderr, c.stderr
    assert crit_expect in c.stderr, c.stderr
    ck = criusec.Checkpoint(img, keys=alice[1])
    with pytest.raises(criusec.CriusecError, match=crit_expect):
        dict(ck.pages(f"pagemap-{pid}.img"))
    for d in dirs:
        after = dir_digest(d)
        after.pop("restore.log", None)
        before[d].pop("restore.log", None)
        assert after == before[d], f"{d} changed"
    return log


def test_genuine_chain_restores_from_the_parent(chain, criu, keys):
    wl, a, b, _ = chain
    alice = keys["alice"]
    # The child does not hold the region: its pages come from the parent.
    assert sum(p.stat().st_size for p in b.glob("pages-*.img")) < (MIB << 20) // 2
    c = crit("x", b, "ps", "--tls-key", alice[1], "--trust", alice[0])
    assert c.returncode == 0, c.stderr
    criu.restore(b, "--tls-key", alice[1], "--trust", alice[0])
    assert wl.report() == f"memory OK {MIB << 20}"


def test_plaintext_child_over_an_encrypted_parent(workloads, criu, tmp_path, keys):
    """Made and edited with no key at all: its pagemap says "in parent", its
    parent link points at a genuine encrypted checkpoint."""
    wl = workloads("memory", MIB)
    a, b = tmp_path / "a", tmp_path / "b"
    dump(criu, wl, a, keys, leave_running=True)
    criu.dump(wl, b)  # plaintext
    make_increment(b, a, wl.pid, key=[], bind=False)
    assert not (b / "cipher.img").exists()
    refused_everywhere(criu, b, wl.pid, keys, "read only as the images directory or as the verified parent",
                       "an encrypted parent is never opened for a plain checkpoint")


def attackers_dump(workloads, criu, tmp_path, keys, name):
    """The attacker's own process, dumped for alice (public certificate) and
    for the attacker, who can then edit it with pycriu: a checkpoint alice's
    key opens, made without it."""
    wl = workloads("memory", MIB)
    img = tmp_path / name
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0], "--tls-cert", keys["mallory"][0])
    return wl, img


def load_cert(path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())


def test_forged_child(chain, workloads, criu, tmp_path, keys):
    """A child made with only alice's certificate, naming the genuine
    parent's (public) id, with a binding it cannot compute."""
    wl, a, b, _ = chain
    evil, img = attackers_dump(workloads, criu, tmp_path, keys, "forged-child")
    parent_id = criusec.Checkpoint(a, keys=keys["alice"][1]).ckpt_id
    ck = criusec.Checkpoint(img, keys=keys["mallory"][1])
    pm = f"pagemap-{evil.pid}.img"
    to_parent(ck, pm, big_entries(ck, pm))
    ck.reseal(parent=(parent_id, os.urandom(32)))
    (img / "parent").symlink_to(os.path.relpath(a, img))
    refused_everywhere(criu, img, evil.pid, keys, "binding does not verify", "the parent binding does not verify")
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memory OK {MIB << 20}"


def clone_as(src, dst_dir, recipients, key, ckpt_id):
    """Every image of the checkpoint src re-encrypted in a new checkpoint with the given id."""
    dst = criusec.Checkpoint.create(dst_dir, recipients, keys=key, ckpt_id=ckpt_id)
    pagemaps = []
    for kind, name in src.manifest():
        if name.startswith("pagemap-"):
            pagemaps.append((kind, name))
        elif kind != criusec.PAGE_TAGS_KIND:
            dst.write_image(name, src.read(name), kind)
    for kind, name in pagemaps:
        dst.write_pages(name, src.pagemap(name)[1], dict(src.pages(name)), kind=kind,
                        magic_name=src.load(name)["magic"])
    dst.reseal()
    return dst


def test_forged_parent(chain, workloads, criu, tmp_path, keys):
    """The genuine child over a parent forged with the public certificate
    and the genuine parent's id: the attacker's own process and pages."""
    wl, a, b, _ = chain
    _, img = attackers_dump(workloads, criu, tmp_path, keys, "attacker")
    parent_id = criusec.Checkpoint(a, keys=keys["alice"][1]).ckpt_id
    fake = tmp_path / "fake-parent"
    clone_as(criusec.Checkpoint(img, keys=keys["mallory"][1]), fake,
             [load_cert(keys["alice"][0]), load_cert(keys["mallory"][0])], keys["mallory"][1], parent_id)
    assert criusec.Checkpoint(fake, keys=keys["alice"][1]).ckpt_id == parent_id
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2, symlinks=False, ignore=shutil.ignore_patterns("parent"))
    (b2 / "parent").symlink_to(os.path.relpath(fake, b2))
    refused_everywhere(criu, b2, wl.pid, keys, "binding does not verify", "the parent binding does not verify")
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memory OK {MIB << 20}"


def test_child_repointed_to_another_checkpoint_of_the_process(chain, criu, tmp_path, keys):
    wl, a, b, _ = chain
    other = tmp_path / "other"
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2, symlinks=False, ignore=shutil.ignore_patterns("parent"))
    (b2 / "parent").symlink_to(os.path.relpath(other, b2))
    refused_everywhere(criu, b2, wl.pid, keys, "another checkpoint id",
                       "the parent images are not the checkpoint these images were dumped against")
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memory OK {MIB << 20}"
