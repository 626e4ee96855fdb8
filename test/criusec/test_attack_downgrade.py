"""Attacker: a downgrade or a replay.  A plaintext checkpoint, or one
whose cipher.img was removed, offered where a signature is required; a
plaintext child over a genuine encrypted parent; a genuine child pointed
at another genuine checkpoint of the same process.  Each refused, by criu
restore and, for chains, by crit and pycriu, before any image of the parent
is used; the genuine chain restores with its memory read from the parent.
"""
import os
import shutil

from helpers import (CHAIN_MIB, chain_dump, crit, make_increment, new_canary, refused_everywhere, restore_refused,
                     signed_dump)


def test_plaintext_and_headerless_checkpoints_are_refused_under_trust(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    wl = workloads("secrets", env={"CANARY": new_canary()})
    criu.dump(wl, tmp_path / "plain")
    restore_refused(criu, tmp_path / "plain", wl.pid, "--tls-key", alice[1], "--trust", alice[0],
                    expect=["not encrypted (no cipher.img)", "--trust"])

    wl2 = signed_dump(workloads, criu, tmp_path / "signed", alice[0], alice)
    cut = tmp_path / "no-header"
    shutil.copytree(tmp_path / "signed", cut)
    (cut / "cipher.img").unlink()
    restore_refused(criu, cut, wl2.pid, "--tls-key", alice[1], "--trust", alice[0], expect=["not encrypted"])
    # The plain one still restores where no protection is configured.
    criu.restore(tmp_path / "plain")
    assert wl.report() == "secrets OK"
    criu.restore(tmp_path / "signed", "--tls-key", alice[1], "--trust", alice[0])
    assert wl2.report() == "secrets OK"


def test_genuine_chain_restores_from_the_parent(chain, criu, keys):
    wl, a, b, _ = chain
    alice = keys["alice"]
    # The child does not hold the region: its pages come from the parent.
    assert sum(p.stat().st_size for p in b.glob("pages-*.img")) < (CHAIN_MIB << 20) // 2
    c = crit("x", b, "ps", "--tls-key", alice[1], "--trust", alice[0])
    assert c.returncode == 0, c.stderr
    criu.restore(b, "--tls-key", alice[1], "--trust", alice[0])
    assert wl.report() == f"memory OK {CHAIN_MIB << 20}"


def test_plaintext_child_over_an_encrypted_parent(workloads, criu, tmp_path, keys):
    """Made and edited with no key at all: its pagemap says "in parent", its
    parent link points at a genuine encrypted checkpoint."""
    wl = workloads("memory", CHAIN_MIB)
    a, b = tmp_path / "a", tmp_path / "b"
    chain_dump(criu, wl, a, keys, leave_running=True)
    criu.dump(wl, b)  # plaintext
    make_increment(b, a, wl.pid, key=[], bind=False)
    assert not (b / "cipher.img").exists()
    refused_everywhere(criu, b, wl.pid, keys, "read only as the images directory or as the verified parent",
                       "an encrypted parent is never opened for a plain checkpoint")


def test_child_repointed_to_another_checkpoint_of_the_process(chain, criu, tmp_path, keys):
    wl, a, b, _ = chain
    other = tmp_path / "other"
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2, symlinks=False, ignore=shutil.ignore_patterns("parent"))
    (b2 / "parent").symlink_to(os.path.relpath(other, b2))
    refused_everywhere(criu, b2, wl.pid, keys, "another checkpoint id",
                       "the parent images are not the checkpoint these images were dumped against")
    criu.restore(b, "--tls-key", keys["alice"][1])
    assert wl.report() == f"memory OK {CHAIN_MIB << 20}"
