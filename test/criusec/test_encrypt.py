"""criu dump --encrypt: no canary in any file criu wrote, state intact after
restore.  The damage an attacker can do to the images is refused in
test_attack_*.py, grouped by attacker."""
import os
import pathlib

from helpers import MAGIC, PAGE_PREFIX, PLAINTEXT_BY_DESIGN, encrypted_dump, files_with, new_canary


def test_canaries_absent_and_state_restored(workloads, criu, tmp_path, keys):
    wl, canary, img = encrypted_dump(workloads, criu, tmp_path, keys)
    assert (img / "cipher.img").exists() and (img / "cipher-manifest.img").exists()
    assert files_with(img, canary.encode()) == []
    for p in img.iterdir():
        if p.name in PLAINTEXT_BY_DESIGN or p.name.startswith(PAGE_PREFIX) or p.is_dir():
            continue
        assert p.read_bytes()[:8] == MAGIC, f"{p.name} is not an encrypted stream"
        assert (p.stat().st_mode & 0o077) == 0, f"{p.name} is readable by others"
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_plain_checkpoint_hears_nothing_of_criusec(workloads, criu, tmp_path):
    """Without --encrypt, criusec stays out of the way: no warning or error
    of it in the logs (every dump looks for an irmap cache in its work dir,
    which criusec once took for an unreadable encrypted directory)."""
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img)
    criu.restore(img)
    assert wl.report() == "secrets OK"
    for log in ("dump.log", "restore.log"):
        text = (img / log).read_text()
        said = [ln for ln in text.splitlines() if "criusec" in ln and ("Warn" in ln or "Error" in ln)]
        assert said == [], f"{log}: {said}"


def test_any_recipient_restores(workloads, criu, tmp_path, keys):
    wl, _, img = encrypted_dump(workloads, criu, tmp_path, keys, recipients=("alice", "bob"))
    criu.restore(img, "--tls-key", keys["bob"][1])
    assert wl.report() == "secrets OK"


def test_encryption_required_marker(workloads, criu, tmp_path):
    marker = pathlib.Path("/etc/criu/encryption-required")  # on the tests' private tmpfs (conftest)
    wl = workloads("counter")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        r = criu.dump(wl, tmp_path / "img", check=False)
    finally:
        marker.unlink()
    assert r.returncode != 0
    assert "Encryption is required" in (tmp_path / "img" / "dump.log").read_text()
    assert os.path.exists(f"/proc/{wl.pid}"), "the refused dump must leave the task running"


def test_key_unwrapped_while_criu_starts(workloads, criu, tmp_path, keys):
    """A restore unwraps the checkpoint key in a thread while kerndat runs
    (criusec-prefetch.c) and uses it; when the first --tls-key is no
    recipient, the thread's failure changes nothing: the next key opens the
    checkpoint, as before."""
    wl, _, img = encrypted_dump(workloads, criu, tmp_path, keys)
    criu.restore(img, "--tls-key", keys["alice"][1])
    log = (img / "restore.log").read_text()
    assert "unlocked with %s (while criu started)" % keys["alice"][1] in log, log[-3000:]
    assert wl.report() == "secrets OK"
    wl.kill()

    wl, _, img = encrypted_dump(workloads, criu, tmp_path, keys, name="second")
    criu.restore(img, "--tls-key", keys["bob"][1], "--tls-key", keys["alice"][1])
    log = (img / "restore.log").read_text()
    assert "(while criu started)" not in log
    assert "is not a recipient of the checkpoint; trying the next key" in log
    assert wl.report() == "secrets OK"
