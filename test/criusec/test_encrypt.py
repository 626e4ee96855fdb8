"""criu dump --encrypt: no canary in any file criu wrote, state intact after
restore, and every kind of damage refused cleanly."""
import os
import pathlib
import shutil

import pytest
from helpers import MAGIC, PAGE_PREFIX, PLAINTEXT_BY_DESIGN, damaged_copy, files_with, new_canary, refused


def encrypted_dump(workloads, criu, tmp_path, keys, name="img", recipients=("alice",)):
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    args = ["--encrypt"]
    for r in recipients:
        args += ["--tls-cert", keys[r][0]]
    criu.dump(wl, tmp_path / name, *args)
    return wl, canary, tmp_path / name


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
