"""Issue 11, on real images: what criu leaves behind and what it refuses to
do, with the genuine checkpoint still restoring.  (Its attacks on the
images, by a page server or by anyone who can write them, are in
test_attack_page_server.py and test_attack_disk.py.)

- secrets left in criu's memory, or in a core file, after a restore;
- helpers criu starts inheriting another image's plaintext;
- the fail-closed gaps under /etc/criu/encryption-required;
- recipient certificates that are expired, not yet valid or may not encipher.
"""
import datetime
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import (CRIU, REPO, enc_args, genuine, hex_canary, lazy_restore, needs_uffd, server_refused,
                     start_page_server)

from pki_util import FilePki


SRC = REPO / "build" / "src"
sys.path.insert(0, str(SRC / "lib"))
from pycriu import criusec  # noqa: E402

MARKER = pathlib.Path("/etc/criu/encryption-required")  # on the tests' private tmpfs (conftest)


# ---- 4. secrets in criu's memory, and core files ----

def readable_memory(pid, with_names=False):
    """Every readable mapping's bytes (with its line of /proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms or "[vvar" in line or "[vsyscall]" in line:
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            yield (line.strip(), data) if with_names else data


def wait_restored(img, p, timeout=120):
    """criu restore without -d: until it says the tree runs (then it waits on it)."""
    deadline = time.monotonic() + timeout
    log = img / "restore.log"
    while time.monotonic() < deadline:
        if log.exists() and "Restore finished successfully" in log.read_text(errors="replace"):
            return
        if p.poll() is not None:
            raise AssertionError(f"criu restore exited ({p.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("the restore did not finish")


def test_no_key_or_plaintext_stays_in_criu_after_a_restore(memcanary, criu, tmp_path, keys):
    """criu restore without -d waits for the tree; by then it holds no key
    and no plaintext (the master key, its PRK, the canary in the task's
    memory and in its stream images are not in criu's memory)."""
    wl, canary, img = genuine(memcanary, criu, tmp_path, keys)
    ck = criusec.Checkpoint(img, keys=keys["alice"][1])
    ck.unlock()
    needles = {"master key": ck.mk, "PRK": ck.prk, "canary": canary.encode()}
    p = subprocess.Popen([CRIU, "restore", "-D", str(img), "-o", "restore.log", "-v4", "--tls-key",
                          keys["alice"][1]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_restored(img, p)
        assert wl.report() == "memcanary OK 0"  # restored and running: criu now waits on it
        assert p.poll() is None
        found = set()
        for where, chunk in readable_memory(p.pid, with_names=True):
            for k, v in needles.items():
                if v in chunk:
                    found.add(f"{k} in {where}")
        assert not found, f"criu still holds: {sorted(found)}"
        # The canary is in the restored task itself: the scan can see it.
        assert any(canary.encode() in c for c in readable_memory(wl.pid))
    finally:
        wl.kill()
        p.wait(timeout=30)


def fault(pid):
    """A real crash: the program counter set to 0 (criu blocks every signal it
    could be sent; a fault cannot be blocked)."""
    subprocess.run(["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "set var $pc = 0", "-ex", "detach"],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=True)


def test_a_crash_writes_no_core_file(memcanary, criu, tmp_path, keys):
    pattern = pathlib.Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern is {pattern!r}: core files of this test cannot be found")
    if not shutil.which("gdb"):
        pytest.skip("needs gdb to make a process fault")

    def unlimited_core():
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def start(cmd, cwd):
        cwd.mkdir()
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=cwd, preexec_fn=unlimited_core)

    # Control: the same rlimit, cwd and fault give a core file for an ordinary process.
    ctl = start(["sleep", "60"], tmp_path / "control")
    time.sleep(0.3)
    fault(ctl.pid)
    assert ctl.wait(timeout=30) == -signal.SIGSEGV
    if not [f for f in os.listdir(tmp_path / "control") if f == "core" or f.startswith("core.")]:
        pytest.skip("no core file even for an ordinary crash here (core dumps disabled on this host)")

    wl, canary, img = genuine(memcanary, criu, tmp_path, keys)
    p = start([CRIU, "restore", "-D", str(img), "-o", "restore.log", "-v4", "--tls-key", keys["alice"][1]],
              tmp_path / "criu-cwd")
    try:
        wait_restored(img, p)
        assert wl.report() == "memcanary OK 0"
        fault(p.pid)
        assert p.wait(timeout=30) == -signal.SIGSEGV
    finally:
        wl.kill()
    for d in (tmp_path / "criu-cwd", img):
        cores = [f for f in os.listdir(d) if f == "core" or f.startswith("core.")]
        assert not cores, f"criu left a core file in {d}: {cores}"


# ---- 4. helpers inherit no other image ----

def test_helpers_inherit_no_plaintext(run, monkeypatch):
    """tar (tmpfs archives) sees the one image it is given (stdin or stdout,
    and criu's own descriptor of it), and no other image's memfd."""
    bindir = run.tmp / "bin"
    bindir.mkdir()
    real = shutil.which("tar")
    (bindir / "tar").write_text(f"#!/bin/sh\nls -l /proc/$$/fd > {run.tmp}/tar-fds.$$ 2>&1\nexec {real} \"$@\"\n")
    (bindir / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    c = hex_canary()
    root, mnt = run.tmp / "root", run.tmp / "mnt"
    root.mkdir()
    mnt.mkdir()
    wl = run.start("tmpfs", root, mnt, canary=c)
    run.encrypted_dump(wl)
    run.restore("--root", "/")
    assert wl.report() == "tmpfs OK"
    logs = list(run.tmp.glob("tar-fds.*"))
    assert len(logs) >= 2, "tar did not run on dump and restore through the wrapper"
    for log in logs:
        images = {line.split("memfd:")[1].split()[0] for line in log.read_text().splitlines() if "memfd:" in line}
        assert len(images) <= 1 and all(i.startswith("tmpfs-dev-") for i in images), \
            f"tar saw another image's plaintext: {sorted(images)}"


# ---- 5. fail-closed gaps under the marker ----

@pytest.fixture
def marker():
    MARKER.touch()
    yield MARKER
    MARKER.unlink()


def test_page_server_refuses_a_plain_dump_when_required(memcanary, criu, tmp_path, keys):
    wl, _ = memcanary("ps-plain")
    srv = tmp_path / "srv"
    srv.mkdir()
    server, port = start_page_server(srv, tmp_path)
    try:
        (tmp_path / "dump").mkdir()
        MARKER.touch()
        try:
            # The dump runs on another host (no marker there): here, only the page server requires.
            r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs none /etc/criu && exec {CRIU} dump "
                                f"-D {tmp_path}/dump -o dump.log -v4 -t {wl.pid} --leave-running --page-server "
                                f"--address 127.0.0.1 --port {port}"], capture_output=True, text=True, timeout=120)
            rc = server.wait(timeout=60)
        finally:
            MARKER.unlink()
        log = (srv / "page-server.log").read_text()
        assert rc != 0 and "the page server refuses the images of a dump without --encrypt" in log, log[-2000:]
        assert r.returncode != 0
        assert not any(p.name.startswith("pages-") and p.stat().st_size for p in srv.iterdir()), \
            "plain pages were written"
    finally:
        server.kill()
    assert os.path.exists(f"/proc/{wl.pid}")


def test_lazy_dump_without_tls_is_refused_when_required(memcanary, criu, tmp_path, keys, marker):
    wl, _ = memcanary("lazy")
    signer = keys["alice"]
    r = criu.run("dump", tmp_path / "img", "-t", wl.pid, *enc_args(keys), "--sign-key", signer[1], "--sign-cert",
                 signer[0], "--lazy-pages", "--address", "127.0.0.1", "--port", "1", check=False)
    log = (tmp_path / "img" / "dump.log").read_text()
    assert r.returncode != 0 and "--lazy-pages needs --tls" in log, log[-2000:]
    assert "Freezing" not in log and os.path.exists(f"/proc/{wl.pid}")


@needs_uffd
def test_page_server_serves_decrypted_pages_only_over_tls_when_required(memcanary, criu, tmp_path, keys, marker):
    """A signed checkpoint, trusted everywhere (the marker requires it); only --tls is missing."""
    alice = keys["alice"]
    wl, _ = memcanary("lazy-ps")
    img = tmp_path / "img"
    criu.dump(wl, img, *enc_args(keys), "--sign-key", alice[1], "--sign-cert", alice[0])
    trust = ("--trust", alice[0])
    server, port = start_page_server(img, tmp_path, "--lazy-pages", "--tls-key", alice[1], *trust)
    r, daemon = lazy_restore(criu, img, alice[1], tmp_path, "--page-server", "--address", "127.0.0.1",
                             "--port", port, *trust, restore_args=trust)
    server_refused(wl, img, daemon, server, "serving decrypted pages needs --tls")


# ---- 8. recipient certificates ----

def test_recipient_certificates_are_checked(workloads, criu, tmp_path, keys):
    pki = FilePki(tmp_path)
    now = datetime.datetime.utcnow()
    cases = {
        "expired": (pki.make("expired", not_before=now - datetime.timedelta(days=9),
                             not_after=now - datetime.timedelta(days=1)), "expired on"),
        "future": (pki.make("future", not_before=now + datetime.timedelta(days=1)), "not yet valid"),
        "sign-only": (pki.make("sign-only", usage=("sign",)), "keyUsage lacks keyEncipherment"),
    }
    wl = workloads("secrets", env={"CANARY": hex_canary()})
    for what, ((cert, key), expect) in cases.items():
        img = tmp_path / what
        r = criu.dump(wl, img, "--encrypt", "--tls-cert", cert, check=False)
        log = (img / "dump.log").read_text()
        assert r.returncode != 0 and expect in log and "--unchecked-recipients" in log, log[-2000:]
        assert "Freezing" not in log and os.path.exists(f"/proc/{wl.pid}")
    # Explicitly, for a lab: taken, and the checkpoint restores with that key.
    cert, key = cases["sign-only"][0]
    criu.dump(wl, tmp_path / "lab", "--encrypt", "--tls-cert", cert, "--unchecked-recipients")
    criu.restore(tmp_path / "lab", "--tls-key", key)
    assert wl.report() == "secrets OK"
