"""Encryption through libcriu, as crun reaches criu: a small C client built
against this tree's libcriu.so and headers dumps with criu_set_encrypt and
criu_add_encrypt_cert, and restores with criu_set_tls_key."""
import os

from helpers import (CRIU, MAGIC, PAGE_PREFIX, PLAINTEXT_BY_DESIGN, files_with, log_tail, new_canary, run_client,
                     wait_gone)


def test_libcriu_encrypted_dump_and_restore(client, workloads, tmp_path, keys):
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    img = tmp_path / "img"
    img.mkdir()

    r = run_client(client, "dump", img, CRIU, keys["alice"][0], wl.pid)
    assert r.returncode == 0 and r.stdout.strip() == "dump 0", \
        f"{r.stdout}{r.stderr}\n{log_tail(img / 'dump.log')}"
    wait_gone([wl.pid])

    assert (img / "cipher.img").exists() and (img / "cipher-manifest.img").exists()
    streams = [p for p in img.iterdir() if p.is_file() and p.name not in PLAINTEXT_BY_DESIGN
               and not p.name.startswith(PAGE_PREFIX)]
    assert len(streams) > 10
    for p in streams:
        assert p.read_bytes()[:8] == MAGIC, f"{p.name} is not an encrypted stream"
    assert files_with(img, canary.encode()) == []

    # Without the key the library reports the failure; nothing runs.
    r = run_client(client, "restore", img, CRIU, "/nonexistent/key.pem")
    assert r.returncode != 0 and "pass the private key with --tls-key" in log_tail(img / "restore.log")
    assert not os.path.exists(f"/proc/{wl.pid}")

    r = run_client(client, "restore", img, CRIU, keys["alice"][1])
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(img / 'restore.log')}"
    assert r.stdout.strip() == f"restore {wl.pid}"
    assert wl.report() == "secrets OK"


def test_libcriu_compressed_dump(client, workloads, tmp_path, keys):
    """criu_set_compress and criu_set_compress_alg reach criu through the
    RPC (the compress and compress_alg fields): the header records lz4,
    streams are compressed, and the checkpoint restores."""
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    img = tmp_path / "img"
    img.mkdir()
    r = run_client(client, "dump", img, CRIU, keys["alice"][0], wl.pid, env=dict(os.environ, COMPRESS="lz4"))
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(img / 'dump.log')}"
    wait_gone([wl.pid])
    assert "compressed with lz4" in (img / "dump.log").read_text(), log_tail(img / "dump.log")
    streams = [p for p in img.iterdir() if p.is_file() and p.read_bytes()[:8] == MAGIC]
    assert streams and all(p.read_bytes()[11] == 1 for p in streams)
    assert files_with(img, canary.encode()) == []
    r = run_client(client, "restore", img, CRIU, keys["alice"][1])
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{log_tail(img / 'restore.log')}"
    assert wl.report() == "secrets OK"
    # An unknown algorithm is refused by criu, before anything is frozen.
    wl2 = workloads("counter")
    wl2.report()
    bad = tmp_path / "bad"
    bad.mkdir()
    r = run_client(client, "dump", bad, CRIU, keys["alice"][0], wl2.pid, env=dict(os.environ, COMPRESS="gzip"))
    assert r.returncode != 0 and "unknown compression algorithm" in log_tail(bad / "dump.log")
    assert wl2.report().startswith("counter")
