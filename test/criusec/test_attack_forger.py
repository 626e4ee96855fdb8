"""Attacker: a forger, who has the recipient's public certificate (and
may have a key of its own) but not the recipient's or the signer's private
key.  A checkpoint it makes for the recipient, a signed header it alters, a
child or a parent it forges for a genuine pre-dump chain: each refused, by
criu restore and, for chains, by crit and pycriu, with nothing changed.
"""
import os
import shutil
import sys

import pytest

from helpers import (CHAIN_MIB, SRC, attackers_dump, big_entries, clone_as, load_cert, refused_everywhere,
                     restore_refused, signed_dump, swap_in, to_parent)
from pycriu import criusec  # helpers puts build/src/lib on sys.path


@pytest.mark.parametrize("how", ["unsigned", "signed by the attacker"])
def test_checkpoint_forged_with_the_public_certificate_is_refused(workloads, criu, tmp_path, keys, how):
    """The attacker has alice's certificate (public), not her key: a checkpoint of the attacker's
    own process, encrypted for alice, put in place of a genuine one."""
    alice, mallory = keys["alice"], keys["mallory"]
    genuine = tmp_path / "genuine"
    wl = signed_dump(workloads, criu, genuine, alice[0], alice)
    keep = tmp_path / "genuine-copy"
    shutil.copytree(genuine, keep)

    evil = signed_dump(workloads, criu, tmp_path / "forged", alice[0],
                       mallory if how != "unsigned" else None)
    swap_in(genuine, tmp_path / "forged")
    expect = ["only restores checkpoints signed by a trusted signer", "sign-key"] if how == "unsigned" else \
        ["is not trusted", "trust PEM"]
    restore_refused(criu, genuine, evil.pid, "--tls-key", alice[1], "--trust", alice[0], expect=expect)
    swap_in(genuine, keep)
    criu.restore(genuine, "--tls-key", alice[1], "--trust", alice[0])
    assert wl.report() == "secrets OK"


def test_tampered_signed_header_is_refused_even_without_trust(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    img = tmp_path / "img"
    wl = signed_dump(workloads, criu, img, alice[0], alice)
    sys.path.insert(0, str(SRC / "lib"))
    from pycriu import images
    raw = (img / "cipher.img").read_bytes()
    hdr = images.loads(raw)
    entry = hdr["entries"][0]
    entry["created"] = str(int(entry["created"]) - 1) if isinstance(entry["created"], str) else \
        entry["created"] - 1
    bad = tmp_path / "bad"
    shutil.copytree(img, bad)
    (bad / "cipher.img").write_bytes(images.dumps(hdr))
    restore_refused(criu, bad, wl.pid, "--tls-key", alice[1], expect=["the signature does not verify"])
    criu.restore(img, "--tls-key", alice[1])
    assert wl.report() == "secrets OK"


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
    assert wl.report() == f"memory OK {CHAIN_MIB << 20}"


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
    assert wl.report() == f"memory OK {CHAIN_MIB << 20}"
