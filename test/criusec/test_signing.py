"""Signed checkpoints and the restore policy (format 2): a checkpoint signed
by an untrusted or expired signer, or too old, is refused before any task
runs, with nothing changed; the genuine signed checkpoint restores.  (Forged
and downgraded checkpoints: test_attack_forger.py, test_attack_downgrade.py.)  Through the command line, a config file, the default
trust file, the encryption-required marker, swrk RPC and libcriu."""
import datetime
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from helpers import (CRIU, DEFAULT_CONF, DEFAULT_TRUST, REPO, dir_digest, fill_opts, log_tail, new_canary,
                     restore_refused, run_client, sign_args, signed_dump, wait_gone)

from pki_util import FilePki


SRC = REPO / "build" / "src"
MARKER = pathlib.Path("/etc/criu/encryption-required")  # on the tests' private tmpfs (conftest)


# ---- a test PKI (python3-cryptography: any validity window and key usage) ----


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    p = FilePki(tmp_path_factory.mktemp("pki"))
    p.ca = p.make("fleet-ca", "p256", ca=True)
    p.node = p.make("node-1", "rsa", issuer=p.objs["fleet-ca"])                  # recipient and signer
    p.node_ec = p.make("node-2", "p384", issuer=p.objs["fleet-ca"], usage=("sign",))
    p.other_ca = p.make("other-ca", "rsa", ca=True)
    p.foreign = p.make("node-x", "p256", issuer=p.objs["other-ca"], usage=("sign",))
    p.ed = p.make("pinned-ed25519", "ed25519", usage=("sign",))
    p.encipher_only = p.make("no-sign", "rsa", usage=("encipher",))
    return p


# ---- the signature ----

def test_signed_checkpoint_restores_under_trust(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    wl = signed_dump(workloads, criu, tmp_path / "img", alice[0], alice)
    dlog = (tmp_path / "img" / "dump.log").read_text()
    assert "Signing as CN=criusec" in dlog
    criu.restore(tmp_path / "img", "--tls-key", alice[1], "--trust", alice[0])
    rlog = (tmp_path / "img" / "restore.log").read_text()
    assert "signed by CN=criusec" in rlog and "(pinned)" in rlog
    assert wl.report() == "secrets OK"


# ---- the signer's certificate ----

def test_ca_issued_signers(workloads, criu, tmp_path, pki):
    node = pki.node
    for name, signer, extra in [("rsa", node, ()), ("p384", pki.node_ec, ()), ("ed25519", pki.ed, ())]:
        img = tmp_path / name
        wl = signed_dump(workloads, criu, img, node[0], signer, extra)
        trust = pki.ed[0] if name == "ed25519" else pki.ca[0]
        criu.restore(img, "--tls-key", node[1], "--trust", trust)
        log = (img / "restore.log").read_text()
        # the ed25519 signer is pinned, the others chain to the fleet CA
        assert ("(pinned)" if name == "ed25519" else "(CA CN=fleet-ca)") in log, log[-2000:]
        assert wl.report() == "secrets OK"

    # A signer from another CA, and a trust file that does not hold the signer's CA.
    img = tmp_path / "foreign"
    wl = signed_dump(workloads, criu, img, node[0], pki.foreign)
    restore_refused(criu, img, wl.pid, "--tls-key", node[1], "--trust", pki.ca[0], expect=["is not trusted"])
    criu.restore(img, "--tls-key", node[1], "--trust", pki.other_ca[0], "--trust", pki.ca[0])
    assert wl.report() == "secrets OK"


def test_a_chain_file_carries_the_intermediate(workloads, criu, tmp_path, pki):
    inter = pki.make("fleet-intermediate", "p256", issuer=pki.objs["fleet-ca"], ca=True)
    leaf = pki.make("node-3", "p256", issuer=pki.objs["fleet-intermediate"], usage=("sign",))
    chain = pki.chain("node-3", "fleet-intermediate")
    img = tmp_path / "img"
    wl = signed_dump(workloads, criu, img, pki.node[0], (chain, leaf[1]))
    criu.restore(img, "--tls-key", pki.node[1], "--trust", pki.ca[0])
    assert wl.report() == "secrets OK"
    assert inter


def test_unusable_signing_identities_are_refused_before_anything_is_frozen(workloads, criu, tmp_path, pki, keys):
    wl = workloads("counter")
    now = datetime.datetime.utcnow()
    expired = pki.make("expired", "p256", usage=("sign",), not_before=now - datetime.timedelta(days=9),
                       not_after=now - datetime.timedelta(days=1))
    future = pki.make("future", "p256", usage=("sign",), not_before=now + datetime.timedelta(days=1))
    cases = [
        (sign_args(*pki.encipher_only), "not allowed to sign"),
        (sign_args(*expired), "expired"),
        (sign_args(*future), "not yet valid"),
        (["--sign-key", pki.node[1], "--sign-cert", pki.node_ec[0]], "sign-cert"),
        (["--sign-key", pki.node[1]], "needs both a key and its certificate"),
    ]
    for i, (args, expect) in enumerate(cases):
        img = tmp_path / f"bad-{i}"
        r = criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0], *args, check=False)
        log = (img / "dump.log").read_text()
        assert r.returncode != 0, f"case {i}: dumped with an unusable signing identity"
        assert expect in log, f"case {i}: no {expect!r} in:\n{log[-2000:]}"
        assert "Freezing" not in log and "Seizing" not in log, f"case {i}: the task was frozen first"
        assert os.path.exists(f"/proc/{wl.pid}"), "a refused dump must leave the task running"


def test_signer_expired_since_the_dump_is_refused(workloads, criu, tmp_path, pki):
    now = datetime.datetime.utcnow().replace(microsecond=0)
    short = pki.make("short-lived", "p256", usage=("sign",), issuer=pki.objs["fleet-ca"],
                     not_after=now + datetime.timedelta(seconds=20))
    img = tmp_path / "img"
    wl = signed_dump(workloads, criu, img, pki.node[0], short)
    while datetime.datetime.utcnow() <= now + datetime.timedelta(seconds=21):
        time.sleep(0.5)
    restore_refused(criu, img, wl.pid, "--tls-key", pki.node[1], "--trust", pki.ca[0], expect=["expired"])


def test_max_age(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    img = tmp_path / "img"
    wl = signed_dump(workloads, criu, img, alice[0], alice)
    time.sleep(2.2)
    restore_refused(criu, img, wl.pid, "--tls-key", alice[1], "--max-age", "1", expect=["more than the maximum age"])
    unsigned = tmp_path / "unsigned"
    wl2 = signed_dump(workloads, criu, unsigned, alice[0])
    restore_refused(criu, unsigned, wl2.pid, "--tls-key", alice[1], "--max-age", "3600",
                    expect=["age cannot be trusted"])
    criu.restore(img, "--tls-key", alice[1], "--max-age", "3600")
    assert wl.report() == "secrets OK"


# ---- host-wide policy: the marker, the default trust file, config lines ----

def test_marker_alone_requires_encryption_and_a_trusted_signature(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    wl_plain = workloads("secrets", env={"CANARY": new_canary()})
    criu.dump(wl_plain, tmp_path / "plain")
    wl_unsigned = signed_dump(workloads, criu, tmp_path / "unsigned", alice[0])
    wl_signed = signed_dump(workloads, criu, tmp_path / "signed", alice[0], alice)
    MARKER.touch()
    try:
        restore_refused(criu, tmp_path / "plain", wl_plain.pid, "--tls-key", alice[1],
                        expect=["not encrypted", "encryption-required exists"])
        restore_refused(criu, tmp_path / "unsigned", wl_unsigned.pid, "--tls-key", alice[1],
                        expect=["unsigned", "no trusted signer is configured", "trust PEM"])
        # Signed, but nothing configured to trust it.
        restore_refused(criu, tmp_path / "signed", wl_signed.pid, "--tls-key", alice[1],
                        expect=["no trusted signer is configured"])
        # Dumps need a signing identity on such a host.
        wl = workloads("counter")
        r = criu.dump(wl, tmp_path / "nokey", "--encrypt", "--tls-cert", alice[0], check=False)
        assert r.returncode != 0
        assert "has no signing key" in (tmp_path / "nokey" / "dump.log").read_text()
        assert os.path.exists(f"/proc/{wl.pid}")
        criu.restore(tmp_path / "signed", "--tls-key", alice[1], "--trust", alice[0])
        assert wl_signed.report() == "secrets OK"
    finally:
        MARKER.unlink()


def test_marker_that_is_a_dangling_link_counts(workloads, criu, tmp_path, keys):
    wl = workloads("counter")
    MARKER.symlink_to("/nonexistent/target")
    try:
        r = criu.dump(wl, tmp_path / "img", check=False)
    finally:
        MARKER.unlink()
    assert r.returncode != 0
    assert "Encryption is required" in (tmp_path / "img" / "dump.log").read_text()


def test_default_trust_file_and_check(workloads, criu, tmp_path, keys):
    alice = keys["alice"]
    wl_unsigned = signed_dump(workloads, criu, tmp_path / "unsigned", alice[0])
    wl_signed = signed_dump(workloads, criu, tmp_path / "signed", alice[0], alice)
    shutil.copy(alice[0], DEFAULT_TRUST)
    try:
        r = subprocess.run([CRIU, "check", "--feature", "criusec"], capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "a restore trusts 1 certificate(s) from /etc/criu/trusted-signers.pem" in out, out
        assert "CN=criusec" in out and "refuses checkpoints that are not encrypted and signed" in out, out
        restore_refused(criu, tmp_path / "unsigned", wl_unsigned.pid, "--tls-key", alice[1],
                        expect=["unsigned", "/etc/criu/trusted-signers.pem"])
        criu.restore(tmp_path / "signed", "--tls-key", alice[1])
        assert wl_signed.report() == "secrets OK"
    finally:
        DEFAULT_TRUST.unlink()


def test_check_names_the_signing_identity(keys):
    alice = keys["alice"]
    r = subprocess.run([CRIU, "check", "--feature", "criusec", *sign_args(*alice)], capture_output=True,
                       text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "a dump would be signed by CN=criusec" in out and alice[1] in out, out
    assert "a restore accepts plaintext and unsigned checkpoints" in out, out
    r = subprocess.run([CRIU, "check", "--feature", "criusec"], capture_output=True, text=True, timeout=60)
    assert "a dump would be unsigned" in r.stdout + r.stderr


def test_config_file_lines(workloads, criu, tmp_path, keys):
    alice, mallory = keys["alice"], keys["mallory"]
    DEFAULT_CONF.write_text(f"encrypt\ntls-cert {alice[0]}\nsign-key {alice[1]}\nsign-cert {alice[0]}\n"
                            f"tls-key {alice[1]}\ntrust {alice[0]}\nmax-age 3600\n")
    try:
        wl = workloads("secrets", env={"CANARY": new_canary()})
        criu.dump(wl, tmp_path / "img")
        assert (tmp_path / "img" / "cipher.img").exists()
        assert "Signing as CN=criusec" in (tmp_path / "img" / "dump.log").read_text()
        # A checkpoint the attacker made for alice is refused by the same config.
        DEFAULT_CONF.write_text(f"encrypt\ntls-cert {alice[0]}\nsign-key {mallory[1]}\nsign-cert {mallory[0]}\n")
        evil = workloads("secrets", env={"CANARY": new_canary()})
        criu.dump(evil, tmp_path / "evil")
        DEFAULT_CONF.write_text(f"tls-key {alice[1]}\ntrust {alice[0]}\nmax-age 3600\n")
        restore_refused(criu, tmp_path / "evil", evil.pid, expect=["is not trusted"])
        criu.restore(tmp_path / "img")
        assert wl.report() == "secrets OK"
    finally:
        DEFAULT_CONF.unlink()


# ---- swrk RPC and libcriu ----

def test_rpc_fields(workloads, criu, tmp_path, keys):
    sys.path.insert(0, str(SRC / "lib"))
    import pycriu

    alice = keys["alice"]

    def rpc(action, img, **fields):
        c = pycriu.criu()
        c.use_binary(CRIU)
        fill_opts(c.opts, img, f"{action}.log", **fields)
        try:
            return getattr(c, action)()
        finally:
            os.close(c.opts.images_dir_fd)

    dumps = {}
    for who in ("alice", "mallory"):
        wl = workloads("secrets", env={"CANARY": new_canary()})
        img = tmp_path / who
        img.mkdir()
        rpc("dump", img, pid=wl.pid, encrypt=True, encrypt_certs=[alice[0]], sign_key=keys[who][1],
            sign_cert=keys[who][0])
        wait_gone([wl.pid])
        dumps[who] = (wl, img)

    wl, img = dumps["mallory"]
    before = dir_digest(img)
    with pytest.raises(pycriu.CRIUException):
        rpc("restore", img, tls_key=alice[1], trust=[alice[0]], max_age=3600)
    assert "is not trusted" in (img / "restore.log").read_text()
    assert dir_digest(img) == before
    wait_gone([wl.pid])

    wl, img = dumps["alice"]
    criu.restore(img, "--tls-key", alice[1], "--trust", alice[0])
    assert wl.report() == "secrets OK"


def test_libcriu_setters(client, workloads, tmp_path, keys):  # noqa: F811 (client is a fixture)
    alice, mallory = keys["alice"], keys["mallory"]
    wl = workloads("secrets", env={"CANARY": new_canary()})
    assert wl.report() == "secrets OK"
    img = tmp_path / "img"
    img.mkdir()
    r = run_client(client, "dump", img, CRIU, alice[0], wl.pid, alice[1], alice[0])
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(img / 'dump.log')}"
    # alice's certificate (criusec-keygen): CN=criusec HOSTNAME
    assert "Signing as CN=criusec " in (img / "dump.log").read_text(), log_tail(img / "dump.log")
    wait_gone([wl.pid])
    r = run_client(client, "restore", img, CRIU, alice[1], mallory[0])
    assert r.returncode != 0 and "is not trusted" in log_tail(img / "restore.log")
    assert not os.path.exists(f"/proc/{wl.pid}")
    r = run_client(client, "restore", img, CRIU, alice[1], alice[0], "3600")
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(img / 'restore.log')}"
    assert wl.report() == "secrets OK"
