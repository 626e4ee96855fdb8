"""pki/criusec-keygen --default: the certificate readable by everyone (its
missing parents 0755, the certificate 0644), only private/ (0700) and the
key (0600) restricted, whatever the caller's umask; an existing key is never
overwritten."""
import os
import shutil
import stat
import subprocess

import pytest
from helpers import REPO


KEYGEN = str(REPO / "pki" / "criusec-keygen")


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def keygen(*args, env=None):
    # umask 077 in the caller must not make the certificate private.
    return subprocess.run(["sh", "-c", 'umask 077; exec "$0" "$@"', KEYGEN, *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(autouse=True)
def openssl():
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (apt-get install openssl)")


def test_default_creates_parents_readable_key_private(tmp_path):
    root = tmp_path / "root"
    r = keygen("--default", env={**os.environ, "CRIUSEC_KEYGEN_ROOT": str(root)})
    assert r.returncode == 0, r.stderr
    pki = root / "etc" / "pki" / "criu"
    for d in (root / "etc", root / "etc" / "pki", pki):
        assert mode(d) == 0o755, d
    assert mode(pki / "private") == 0o700
    assert mode(pki / "cert.pem") == 0o644
    assert mode(pki / "private" / "key.pem") == 0o600
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(pki / "cert.pem")],
                         capture_output=True, text=True, check=True).stdout
    assert "criusec" in out


def test_default_refuses_to_overwrite_a_key(tmp_path):
    env = {**os.environ, "CRIUSEC_KEYGEN_ROOT": str(tmp_path)}
    assert keygen("--default", env=env).returncode == 0
    key = tmp_path / "etc" / "pki" / "criu" / "private" / "key.pem"
    before = key.read_bytes()
    r = keygen("--default", env=env)
    assert r.returncode != 0 and "not overwriting" in r.stderr
    assert key.read_bytes() == before


def test_default_in_the_real_place_needs_only_missing_dirs(tmp_path):
    """Without the override, in a mount namespace of its own with an empty
    tmpfs on /etc/pki: keygen creates /etc/pki/criu itself."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a mount namespace with a tmpfs on /etc/pki")
    script = ("mount -n -t tmpfs -o mode=0755 criusec-test /etc/pki && "
              f"umask 077 && {KEYGEN} --default >/dev/null && "
              "stat -c '%a %n' /etc/pki/criu /etc/pki/criu/private "
              "/etc/pki/criu/cert.pem /etc/pki/criu/private/key.pem")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["755 /etc/pki/criu", "700 /etc/pki/criu/private",
                                        "644 /etc/pki/criu/cert.pem",
                                        "600 /etc/pki/criu/private/key.pem"]
