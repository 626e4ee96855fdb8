"""Encryption through libcriu, as crun reaches criu: a small C client built
against this tree's libcriu.so and headers dumps with criu_set_encrypt and
criu_add_encrypt_cert, and restores with criu_set_tls_key."""
import os
import subprocess

import pytest

from conftest import CRIU, HERE, REPO, wait_gone
from test_encrypt import MAGIC, PAGE_PREFIX, PLAINTEXT_BY_DESIGN, files_with, keys, new_canary  # noqa: F401

LIBDIR = REPO / "build" / "src" / "lib" / "c"
# criu.h needs rpc.pb-c.h and version.h; criu/include as a whole would
# shadow system headers (its string.h), so version.h alone is copied.
VERSION_H = REPO / "build" / "src" / "criu" / "include" / "version.h"


@pytest.fixture(scope="session")
def client(tmp_path_factory):
    lib = LIBDIR / "libcriu.so"
    if not lib.exists():
        pytest.skip(f"no {lib}: build libcriu first (make)")
    d = tmp_path_factory.mktemp("libcriu")
    # The library's soname is libcriu.so.2: give the loader that name.
    (d / "libcriu.so.2").symlink_to(lib)
    (d / "include").mkdir()
    (d / "include" / "version.h").write_bytes(VERSION_H.read_bytes())
    out = d / "libcriu_client"
    includes = [LIBDIR, REPO / "build" / "src" / "images", d / "include"]
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *[f"-I{i}" for i in includes], "-o", str(out),
                    str(HERE / "workloads" / "libcriu_client.c"), str(d / "libcriu.so.2"),
                    f"-Wl,-rpath,{d}"], check=True)
    return str(out)


def run_client(client, *args, env=None):
    r = subprocess.run([client, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=180, env=env)
    return r


def log_tail(path):
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


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
    assert "compressed with lz4" in log_tail(img / "dump.log") or \
        "compressed with lz4" in (img / "dump.log").read_text()
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
