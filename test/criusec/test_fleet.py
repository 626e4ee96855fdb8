"""Keys for a fleet (issue 15): node certificates from a CA (pki/criusec-keygen),
private keys kept in a token (a SoftHSM2 token made here, reached through a
PKCS#11 URL), several private keys for rotation, several CAs in the trust
file.  Every refusal is made on a real checkpoint, leaves no task and no
changed image, and the genuine checkpoint restores afterwards."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
from cryptography import x509
from helpers import (CRIU, DEFAULT_CONF, DEFAULT_TRUST, REPO, dir_digest, files_with, log_tail, new_canary,
                     restore_refused, run_client)


KEYGEN = str(REPO / "pki" / "criusec-keygen")
SRC = REPO / "build" / "src"
PIN, SO_PIN = "20261130", "87654321"


def keygen(*args, check=True, env=None):
    r = subprocess.run([KEYGEN, *map(str, args)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    if check:
        assert r.returncode == 0, f"criusec-keygen {' '.join(map(str, args))}: {r.stderr}"
    return r


# ---- the CA and its nodes (criusec-keygen ca init, node) ----

class Node:
    def __init__(self, name, key, cert):
        self.name, self.key, self.cert = name, str(key), str(cert)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two CAs; nodes a and b from the first, x from the second."""
    d = tmp_path_factory.mktemp("fleet")
    for ca in ("ca1", "ca2"):
        keygen("ca", "init", d / ca, f"criusec test {ca}")
    nodes = {}
    for name, ca in (("node-a", "ca1"), ("node-b", "ca1"), ("node-x", "ca2"), ("node-a-new", "ca1")):
        keygen("node", "--ca", d / ca, "--out", d / "nodes", name)
        nodes[name] = Node(name, d / "nodes" / f"{name}-key.pem", d / "nodes" / f"{name}-cert.pem")
    return {"dir": d, "ca1": str(d / "ca1" / "ca-cert.pem"), "ca2": str(d / "ca2" / "ca-cert.pem"), **nodes}


def dump_as(workloads, criu, img, signer, *recipients, extra=()):
    """A workload holding a canary, dumped encrypted for recipients (Nodes), signed by signer."""
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    args = ["--encrypt", "--sign-key", signer.key, "--sign-cert", signer.cert]
    for r in recipients:
        args += ["--tls-cert", r.cert]
    criu.dump(wl, img, *args, *extra)
    assert files_with(img, canary.encode()) == []
    return wl


def test_node_certificates_have_the_node_usages(fleet):
    for name in ("node-a", "node-x"):
        cert = x509.load_pem_x509_certificate(pathlib.Path(fleet[name].cert).read_bytes())
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert not bc.ca
        assert cert.subject.rfc4514_string() == f"CN={name}"
    ca = x509.load_pem_x509_certificate(pathlib.Path(fleet["ca1"]).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(os.stat(fleet["dir"] / "ca1" / "ca-key.pem").st_mode & 0o777) == "0o600"
    assert oct(os.stat(fleet["node-a"].key).st_mode & 0o777) == "0o600"


def test_node_installs_in_the_default_places(tmp_path, fleet):
    root = tmp_path / "root"
    r = keygen("node", "--ca", fleet["dir"] / "ca1", "node-c", env={"CRIUSEC_KEYGEN_ROOT": str(root)})
    modes = {p: oct(os.stat(root / p).st_mode & 0o777) for p in
             ("etc", "etc/pki", "etc/pki/criu", "etc/pki/criu/private", "etc/pki/criu/private/key.pem",
              "etc/pki/criu/cert.pem", "etc/criu", "etc/criu/trusted-signers.pem")}
    assert modes == {"etc": "0o755", "etc/pki": "0o755", "etc/pki/criu": "0o755", "etc/pki/criu/private": "0o700",
                     "etc/pki/criu/private/key.pem": "0o600", "etc/pki/criu/cert.pem": "0o644",
                     "etc/criu": "0o755", "etc/criu/trusted-signers.pem": "0o644"}, r.stdout
    assert (root / "etc/criu/trusted-signers.pem").read_bytes() == pathlib.Path(fleet["ca1"]).read_bytes()
    key = (root / "etc/pki/criu/private/key.pem").read_bytes()
    r = keygen("node", "--ca", fleet["dir"] / "ca1", "node-c", check=False,
               env={"CRIUSEC_KEYGEN_ROOT": str(root)})
    assert r.returncode != 0 and "not overwriting" in r.stderr
    assert (root / "etc/pki/criu/private/key.pem").read_bytes() == key
    r = keygen("trust", fleet["node-a"].cert, check=False, env={"CRIUSEC_KEYGEN_ROOT": str(root)})
    assert r.returncode != 0 and "not a CA certificate" in r.stderr

    # A node that trusts another CA already keeps its trust file (a fleet changing CA trusts two).
    root2 = tmp_path / "root2"
    keygen("trust", fleet["ca2"], env={"CRIUSEC_KEYGEN_ROOT": str(root2)})
    r = keygen("node", "--ca", fleet["dir"] / "ca1", "node-d", env={"CRIUSEC_KEYGEN_ROOT": str(root2)})
    assert "does not hold this CA" in r.stderr and "criusec-keygen trust" in r.stderr
    assert (root2 / "etc/criu/trusted-signers.pem").read_bytes() == pathlib.Path(fleet["ca2"]).read_bytes()
    keygen("trust", fleet["ca1"], fleet["ca2"], env={"CRIUSEC_KEYGEN_ROOT": str(root2)})
    assert (root2 / "etc/criu/trusted-signers.pem").read_bytes() == \
        pathlib.Path(fleet["ca1"]).read_bytes() + pathlib.Path(fleet["ca2"]).read_bytes()


@pytest.fixture
def trust_file():
    """/etc/criu/trusted-signers.pem (the tests' private tmpfs) written by criusec-keygen trust."""
    def install(*cas):
        keygen("trust", *cas)
        assert DEFAULT_TRUST.exists()
    yield install
    DEFAULT_TRUST.unlink(missing_ok=True)


def test_two_nodes_of_one_ca_restore_each_others_checkpoints(workloads, criu, tmp_path, fleet, trust_file):
    """Only the CA is trusted (the default trust file): a's checkpoint for b restores on b, and
    b's for a on a; a checkpoint signed by a node of another CA is refused."""
    a, b, x = fleet["node-a"], fleet["node-b"], fleet["node-x"]
    trust_file(fleet["ca1"])
    wl_ab = dump_as(workloads, criu, tmp_path / "a-for-b", a, b)
    wl_ba = dump_as(workloads, criu, tmp_path / "b-for-a", b, a)
    wl_xb = dump_as(workloads, criu, tmp_path / "x-for-b", x, b)

    restore_refused(criu, tmp_path / "x-for-b", wl_xb.pid, "--tls-key", b.key, expect=["CN=node-x", "is not trusted"])
    criu.restore(tmp_path / "a-for-b", "--tls-key", b.key)
    assert "signed by CN=node-a (CA CN=criusec test ca1)" in (tmp_path / "a-for-b" / "restore.log").read_text()
    assert wl_ab.report() == "secrets OK"
    criu.restore(tmp_path / "b-for-a", "--tls-key", a.key)
    assert wl_ba.report() == "secrets OK"

    # A trust file with both CAs (a fleet moving to a new CA) takes x's checkpoint too.
    trust_file(fleet["ca1"], fleet["ca2"])
    criu.restore(tmp_path / "x-for-b", "--tls-key", b.key)
    assert "(CA CN=criusec test ca2)" in (tmp_path / "x-for-b" / "restore.log").read_text()
    assert wl_xb.report() == "secrets OK"


# ---- rotation: several private keys ----

def test_rotation_old_and_new_keys(workloads, criu, tmp_path, fleet):
    old, new, b = fleet["node-a"], fleet["node-a-new"], fleet["node-b"]
    wl_old = dump_as(workloads, criu, tmp_path / "for-old", b, old)
    wl_new = dump_as(workloads, criu, tmp_path / "for-new", b, new)
    both = ["--tls-key", new.key, "--tls-key", old.key, "--trust", fleet["ca1"]]

    # One key alone: the other's checkpoint is not for it.
    restore_refused(criu, tmp_path / "for-old", wl_old.pid, "--tls-key", new.key, "--trust", fleet["ca1"],
                    expect=["no recipient stanza", new.key])
    restore_refused(criu, tmp_path / "for-new", wl_new.pid, "--tls-key", old.key, "--trust", fleet["ca1"],
                    expect=["no recipient stanza", old.key])
    # A checkpoint for neither: both keys are tried, and the error says none is a recipient.
    wl_b = dump_as(workloads, criu, tmp_path / "for-b", b, b)
    restore_refused(criu, tmp_path / "for-b", wl_b.pid, *both, expect=["none of the 2 keys", "is a recipient"])

    criu.restore(tmp_path / "for-old", *both)
    log = (tmp_path / "for-old" / "restore.log").read_text()
    assert f"{new.key} is not a recipient of the checkpoint; trying the next key" in log
    assert f"unlocked with {old.key}" in log
    assert wl_old.report() == "secrets OK"
    criu.restore(tmp_path / "for-new", *both)
    assert f"unlocked with {new.key}" in (tmp_path / "for-new" / "restore.log").read_text()
    assert wl_new.report() == "secrets OK"
    criu.restore(tmp_path / "for-b", "--tls-key", b.key, "--trust", fleet["ca1"])
    assert wl_b.report() == "secrets OK"


def test_rotation_through_config_lines(workloads, criu, tmp_path, fleet):
    """Two 'tls-key' lines in default.conf, and a command-line key added to them."""
    old, new, b = fleet["node-a"], fleet["node-a-new"], fleet["node-b"]
    wl_old = dump_as(workloads, criu, tmp_path / "for-old", b, old)
    wl_b = dump_as(workloads, criu, tmp_path / "for-b", b, b)
    DEFAULT_CONF.write_text(f"tls-key {new.key}\ntls-key {old.key}\ntrust {fleet['ca1']}\n")
    try:
        criu.restore(tmp_path / "for-old")
        assert wl_old.report() == "secrets OK"
        restore_refused(criu, tmp_path / "for-b", wl_b.pid, expect=["none of the 2 keys"])
        criu.restore(tmp_path / "for-b", "--tls-key", b.key)
        assert f"unlocked with {b.key}" in (tmp_path / "for-b" / "restore.log").read_text()
        assert wl_b.report() == "secrets OK"
    finally:
        DEFAULT_CONF.unlink()


def test_rotation_through_rpc_and_libcriu(client, workloads, criu, tmp_path, fleet):  # noqa: F811
    sys.path.insert(0, str(SRC / "lib"))
    import pycriu

    old, new, b = fleet["node-a"], fleet["node-a-new"], fleet["node-b"]
    wl = dump_as(workloads, criu, tmp_path / "rpc", b, old)
    c = pycriu.criu()
    c.use_binary(CRIU)
    c.opts.images_dir_fd = os.open(tmp_path / "rpc", os.O_DIRECTORY)
    c.opts.log_file = "restore.log"
    c.opts.log_level = 4
    c.opts.tls_key = new.key
    c.opts.tls_keys.extend([old.key])
    c.opts.trust.extend([fleet["ca1"]])
    try:
        c.restore()
    finally:
        os.close(c.opts.images_dir_fd)
    assert f"unlocked with {old.key}" in (tmp_path / "rpc" / "restore.log").read_text()
    assert wl.report() == "secrets OK"

    wl = dump_as(workloads, criu, tmp_path / "lib", b, old)
    r = run_client(client, "restore", tmp_path / "lib", CRIU, f"{new.key},{old.key}", fleet["ca1"])
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(tmp_path / 'lib' / 'restore.log')}"
    assert wl.report() == "secrets OK"


# ---- a key in a token (SoftHSM2) ----

class Token:
    """A SoftHSM2 token of this test's own (SOFTHSM2_CONF in a temp dir),
    an RSA key pair generated inside it, its certificate from the test CA."""

    def __init__(self, d, fleet):
        self.d = d
        conf = d / "softhsm2.conf"
        (d / "tokens").mkdir()
        conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)  # criu, p11tool and certtool inherit it
        self.run(["softhsm2-util", "--init-token", "--free", "--label", "criusec-node", "--pin", PIN,
                  "--so-pin", SO_PIN])
        self.run(["p11tool", "--login", "--generate-privkey", "rsa", "--bits", "2048", "--label", "criu-key",
                  "--id", "01", "pkcs11:token=criusec-node"])
        self.run(["p11tool", "--login", "--generate-privkey", "rsa", "--bits", "2048", "--label", "other-key",
                  "--id", "02", "pkcs11:token=criusec-node"])
        self.pin_file = d / "pin"
        self.pin_file.write_text(PIN + "\n")
        self.pin_file.chmod(0o600)
        self.base = "pkcs11:token=criusec-node;object=criu-key;type=private"
        self.url = f"{self.base}?pin-source={self.pin_file}"
        csr = d / "node-t.csr"
        csr.write_text(keygen("request", "--key", self.url, "node-t").stdout)
        self.cert = d / "node-t-cert.pem"
        self.cert.write_text(keygen("sign", "--ca", fleet["dir"] / "ca1", csr).stdout)
        self.cert = str(self.cert)
        self.node = Node("node-t", self.url, self.cert)

    def run(self, cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "GNUTLS_PIN": PIN, "GNUTLS_SO_PIN": SO_PIN})
        assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
        return r


@pytest.fixture(scope="module")
def token(tmp_path_factory, fleet):
    for tool, pkg in (("softhsm2-util", "softhsm2"), ("p11tool", "gnutls-bin"), ("certtool", "gnutls-bin")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {pkg})")
    saved = os.environ.get("SOFTHSM2_CONF")
    t = Token(tmp_path_factory.mktemp("token"), fleet)
    yield t
    if saved is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = saved


def test_the_token_key_cannot_be_exported(token):
    r = token.run(["p11tool", "--login", "--list-all-privkeys", "pkcs11:token=criusec-node;object=criu-key"])
    assert "CKA_SENSITIVE" in r.stdout and "CKA_NEVER_EXTRACTABLE" in r.stdout, r.stdout
    r = subprocess.run(["p11tool", "--login", "--export", token.base], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "GNUTLS_PIN": PIN})
    assert r.returncode != 0 and "PRIVATE KEY" not in r.stdout
    cert = x509.load_pem_x509_certificate(pathlib.Path(token.cert).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=node-t"


def test_token_signs_the_dump_and_unwraps_the_restore(workloads, criu, tmp_path, token, fleet):
    img = tmp_path / "img"
    wl = dump_as(workloads, criu, img, token.node, token.node)
    dlog = (img / "dump.log").read_text()
    assert "Signing as CN=node-t" in dlog and PIN not in dlog
    criu.restore(img, "--tls-key", token.url, "--trust", fleet["ca1"])
    rlog = (img / "restore.log").read_text()
    assert "signed by CN=node-t (CA CN=criusec test ca1)" in rlog
    assert f"unlocked with {token.url}" in rlog
    assert wl.report() == "secrets OK"


def test_token_through_a_config_file(workloads, criu, tmp_path, token, fleet):
    """Dump and restore with the token's URL in default.conf only; the PIN in the URL itself (pin-value)
    is never written to a log."""
    url_value = f"{token.base};pin-value={PIN}"
    DEFAULT_CONF.write_text(f"encrypt\ntls-cert {token.cert}\nsign-key {url_value}\nsign-cert {token.cert}\n"
                            f"tls-key {token.url}\ntrust {fleet['ca1']}\n")
    try:
        canary = new_canary()
        wl = workloads("secrets", env={"CANARY": canary})
        criu.dump(wl, tmp_path / "img")
        assert files_with(tmp_path / "img", canary.encode()) == []
        assert "Signing as CN=node-t" in (tmp_path / "img" / "dump.log").read_text()
        criu.restore(tmp_path / "img")
        for log in ("dump.log", "restore.log"):
            assert PIN not in (tmp_path / "img" / log).read_text()
        assert wl.report() == "secrets OK"
    finally:
        DEFAULT_CONF.unlink()


def test_rotation_from_a_file_key_to_a_token_key(workloads, criu, tmp_path, token, fleet):
    """A node that moved its key into a token still restores what was made for its old file key."""
    old, b = fleet["node-a"], fleet["node-b"]
    wl = dump_as(workloads, criu, tmp_path / "img", b, old)
    criu.restore(tmp_path / "img", "--tls-key", token.url, "--tls-key", old.key, "--trust", fleet["ca1"])
    assert f"unlocked with {old.key}" in (tmp_path / "img" / "restore.log").read_text()
    assert wl.report() == "secrets OK"


@pytest.fixture
def token_checkpoint(workloads, criu, tmp_path, token, fleet):
    """A checkpoint for the token's key and an escrow key (node-a's PEM file), signed by node-b."""
    img = tmp_path / "img"
    wl = dump_as(workloads, criu, img, fleet["node-b"], token.node, fleet["node-a"])
    return img, wl


BAD_KEYS = {
    "wrong PIN (pin-value)": (lambda t: f"{t.base}?pin-value=99999999", ["the token refused the PIN"]),
    "wrong PIN (pin-source)": (lambda t: f"{t.base}?pin-source={t.d / 'wrong-pin'}",
                               ["the token refused the PIN", "wrong-pin"]),
    "no PIN": (lambda t: t.base, ["the token needs a PIN", "pin-source=FILE"]),
    "unreadable pin-source": (lambda t: f"{t.base}?pin-source={t.d / 'no-such-file'}",
                              ["pin-source", "no-such-file", "No such file"]),
    "missing token": (lambda t: f"pkcs11:token=no-such-token;object=criu-key?pin-source={t.pin_file}",
                      ["no such PKCS#11 token or private key"]),
    "not a recipient": (lambda t: f"pkcs11:token=criusec-node;object=other-key?pin-source={t.pin_file}",
                        ["no recipient stanza matches the private key", "other-key"]),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_token_refusals_at_restore(criu, token, fleet, token_checkpoint, case):
    img, wl = token_checkpoint
    (token.d / "wrong-pin").write_text("11111111\n")
    url, expect = BAD_KEYS[case]
    log = restore_refused(criu, img, wl.pid, "--tls-key", url(token), "--trust", fleet["ca1"], expect=expect)
    assert PIN not in log and "99999999" not in log
    criu.restore(img, "--tls-key", token.url, "--trust", fleet["ca1"])
    assert wl.report() == "secrets OK"


@pytest.mark.parametrize("case", ["wrong PIN (pin-value)", "no PIN", "missing token"])
def test_token_refusals_at_dump_freeze_nothing(workloads, criu, tmp_path, token, case):
    """A signing key that cannot be used stops the dump before any task is frozen: the workload
    runs on, no image is written."""
    url, expect = BAD_KEYS[case]
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    r = criu.dump(wl, img, "--encrypt", "--tls-cert", token.cert, "--sign-key", url(token), "--sign-cert",
                  token.cert, check=False)
    log = (img / "dump.log").read_text()
    assert r.returncode != 0
    for e in ["Signing identity (--sign-key/--sign-cert", *expect]:
        assert e in log, log[-2000:]
    assert "99999999" not in log
    assert "SEIZE" not in log and "freezing processes" not in log  # no task was seized or frozen
    assert sorted(p.name for p in img.iterdir() if p.name != "dump.log") == []
    assert wl.report() == "secrets OK"


def test_crit_refuses_a_token_url_clearly(criu, tmp_path, token, fleet, token_checkpoint):
    """crit and pycriu have no PKCS#11: a URL alone is refused in one line; with the escrow's
    PEM key beside it, they read the checkpoint."""
    img, wl = token_checkpoint
    crit = ["/usr/bin/python3", "-m", "crit"]  # Debian's, as a user runs it (test_crit.py)
    env = {**os.environ, "PYTHONPATH": f"{SRC / 'lib'}:{SRC / 'crit'}"}
    secret_url = f"{token.base};pin-value={PIN}"
    before = dir_digest(img)
    r = subprocess.run([*crit, "x", str(img), "ps", "--tls-key", secret_url, "--trust", fleet["ca1"]],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "PKCS#11 URL" in r.stderr and "cannot use keys kept in a token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and PIN not in r.stderr
    assert dir_digest(img) == before
    r = subprocess.run([*crit, "x", str(img), "ps", "--tls-key", secret_url, "--tls-key", fleet["node-a"].key,
                        "--trust", fleet["ca1"]], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and str(wl.pid) in r.stdout, r.stdout + r.stderr

    sys.path.insert(0, str(SRC / "lib"))
    from pycriu import criusec
    with pytest.raises(criusec.PrivateKeyError, match="cannot use keys kept in a token"):
        criusec.Checkpoint(img, keys=[token.url], trust=fleet["ca1"]).verify()
    criusec.Checkpoint(img, keys=[token.url, fleet["node-a"].key], trust=fleet["ca1"]).verify()
    with pytest.raises(criusec.PrivateKeyError, match="cannot use keys kept in a token"):
        criusec.load_signing_key(secret_url)
    assert dir_digest(img) == before
    criu.restore(img, "--tls-key", token.url, "--trust", fleet["ca1"])
    assert wl.report() == "secrets OK"


# ---- through runc, configured as a node would be ----

@pytest.fixture
def system_token(token):
    """The token's configuration where every process finds it, /etc/softhsm/softhsm2.conf (a tmpfs
    over /etc/softhsm in the tests' own mount namespace): runc, like the engines, passes criu no
    SOFTHSM2_CONF."""
    etc = pathlib.Path("/etc/softhsm")
    if not etc.is_dir():
        pytest.skip("no /etc/softhsm (apt-get install softhsm2)")
    subprocess.run(["mount", "-n", "-t", "tmpfs", "-o", "mode=0755", "criusec-test", str(etc)], check=True)
    try:
        (etc / "softhsm2.conf").write_text(pathlib.Path(os.environ["SOFTHSM2_CONF"]).read_text())
        yield token
    finally:
        subprocess.run(["umount", "-n", str(etc)], check=True)


class Runc:
    """A busybox container run by runc (its own state directory), checkpointed with this criu."""

    def __init__(self, d, canary):
        self.d, self.id = d, f"criusec-fleet-{os.getpid()}"
        rootfs = d / "bundle" / "rootfs"
        for sub in ("bin", "tmp", "proc", "dev", "sys"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy2(shutil.which("busybox"), rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sh").symlink_to("busybox")
        (rootfs / "bin" / "sleep").symlink_to("busybox")
        self.run("spec", cwd=d / "bundle")
        spec = json.loads((d / "bundle" / "config.json").read_text())
        spec["process"].update(terminal=False, env=spec["process"]["env"] + [f"CANARY={canary}"],
                               args=["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; "
                                     "sleep 0.05; done"])
        spec["root"]["readonly"] = False
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        (d / "bundle" / "config.json").write_text(json.dumps(spec))
        self.count_file = rootfs / "tmp" / "count"

    def run(self, *args, check=True, cwd=None):
        """runc as an engine runs it: no environment beyond PATH.  A detached container keeps the
        standard streams it is given: /dev/null then, runc's errors in its --log."""
        detach = "-d" in args
        log = self.d / "runc.log"
        log.unlink(missing_ok=True)
        out = subprocess.DEVNULL if detach else subprocess.PIPE
        r = subprocess.run(["runc", "--root", str(self.d / "state"), "--log", str(log), "--criu", CRIU, *args],
                           cwd=cwd or self.d, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True, timeout=180)
        r.stderr = (r.stderr or "") + (log.read_text() if log.exists() else "")
        if check:
            assert r.returncode == 0, f"runc {' '.join(args)}: {r.stderr}"
        return r

    def counting(self):
        """The container's counter goes on (runc run -d returns before the shell's first write)."""
        def count():
            try:
                return int(self.count_file.read_text() or 0)
            except FileNotFoundError:
                return 0
        first = count()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if count() > first:
                return True
        return False

    def status(self):
        r = self.run("state", self.id, check=False)
        return json.loads(r.stdout)["status"] if r.returncode == 0 else None

    def remove(self):
        self.run("kill", self.id, "KILL", check=False)
        self.run("delete", "-f", self.id, check=False)


def test_runc_with_the_key_in_a_token(tmp_path, system_token, fleet, trust_file):
    """A node's whole configuration in /etc/criu (encrypt, the token's URL for signing and
    unwrapping, the CA as trust, the encryption-required marker); runc checkpoints and restores a
    container through it.  A wrong PIN in default.conf refuses the restore, container and
    checkpoint unchanged; the genuine restore carries on counting."""
    if shutil.which("runc") is None or shutil.which("busybox") is None:
        pytest.skip("needs runc and busybox (apt-get install runc busybox-static)")
    token = system_token
    trust_file(fleet["ca1"])
    marker = pathlib.Path("/etc/criu/encryption-required")
    canary = new_canary()
    rc = Runc(tmp_path, canary)
    conf = (f"encrypt\ntls-cert {token.cert}\nsign-key {token.url}\nsign-cert {token.cert}\n"
            f"tls-key {token.url}\n")
    DEFAULT_CONF.write_text(conf)
    marker.touch()
    img = tmp_path / "img"
    try:
        rc.run("run", "-d", rc.id, cwd=tmp_path / "bundle")
        assert rc.counting()
        r = rc.run("checkpoint", "--image-path", str(img), rc.id, check=False)
        assert r.returncode == 0, r.stderr + log_tail(img / "dump.log")
        assert rc.status() is None  # checkpointed and stopped
        assert (img / "cipher.img").exists() and files_with(img, canary.encode()) == []
        assert "Signing as CN=node-t" in (img / "dump.log").read_text()

        before = dir_digest(img)
        DEFAULT_CONF.write_text(conf.replace(token.url, f"{token.base}?pin-value=99999999"))
        r = rc.run("restore", "-d", "--image-path", str(img), "-b", str(tmp_path / "bundle"), rc.id, check=False)
        assert r.returncode != 0
        log = (img / "restore.log").read_text()
        assert "the token refused the PIN" in log and "99999999" not in log, log[-2000:]
        assert dir_digest(img) == before
        assert rc.status() in (None, "stopped")
        rc.run("delete", "-f", rc.id, check=False)

        DEFAULT_CONF.write_text(conf)
        r = rc.run("restore", "-d", "--image-path", str(img), "-b", str(tmp_path / "bundle"), rc.id, check=False)
        assert r.returncode == 0, r.stderr + log_tail(img / "restore.log")
        assert "signed by CN=node-t (CA CN=criusec test ca1)" in (img / "restore.log").read_text()
        assert rc.status() == "running" and rc.counting()
    finally:
        rc.remove()
        marker.unlink(missing_ok=True)
        DEFAULT_CONF.unlink(missing_ok=True)
