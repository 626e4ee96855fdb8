"""Podman's incremental checkpoint, encrypted by criu's config files alone
(issue 13): 'podman container checkpoint --pre-checkpoint --export', then
'--with-previous --export', then 'podman container restore
--import-previous PRE --import CKPT' of a container that keeps rewriting an
eighth of its memory, which holds a canary.

The dumping host signs its checkpoints and is no recipient of them (they are
for a target host and an escrow key): /etc/criu/runc.conf says "encrypt",
the recipients' certificates and the signing pair, and names no private key
of a recipient.  The dump over the pre-checkpoint reads its parent with the
chain key the pre-dump left in root's keyring.  For the restore, runc.conf
then holds what the target host's would: its key and the signer it trusts.

Checked: the canary is in the container's memory and in no file of either
export (tar members too, as Podman writes them and unpacked) nor anywhere
in Podman's storage (after the checkpoints, and after the restore has
unpacked both archives there); both checkpoint directories carry cipher.img; the
final dump takes every page that did not change from the pre-checkpoint
(stats-dump); the restored container finds every byte of its memory as it
was and carries on; restore authenticated both checkpoints of the chain.

Pre-dump needs memory tracking (soft-dirty), which the kernel of make
test-engines' host lacks: the VM layer (make test-vm) runs this file under
Debian 12's kernel and skips it when Podman is not installed on the host.
"""
import ctypes
import os
import pathlib
import re
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time

import pytest

import engines
import image
from conftest import NOTES, REPO, STATE, keygen

sys.path.insert(0, str(REPO / "test" / "criusec"))
import chainkeys  # noqa: E402

MIB = 32
HUGE = 512  # 4 KiB pages in a 2 MiB huge page
IMAGE = "localhost/criusec-churn:latest"
NAME = "criusec-chain"
RUNC_CONF = pathlib.Path("/etc/criu/runc.conf")


@pytest.fixture(scope="module")
def tracking():
    r = subprocess.run(["criu", "check", "--feature", "mem_dirty_track"], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        why = ((r.stdout + r.stderr).strip().splitlines() or ["failed"])[-1]
        pytest.skip("Podman's --pre-checkpoint needs memory tracking (soft-dirty, "
                    f"CONFIG_MEM_SOFT_DIRTY; make test-vm has it): {why}")


def pycriu_images():
    """pycriu of the criu under test: the build tree's, or the installed one."""
    if os.environ.get("CRIUSEC_TEST_CRIU"):
        sys.path.insert(0, str(pathlib.Path(os.environ["CRIUSEC_TEST_CRIU"]).resolve().parent.parent / "lib"))
    import pycriu
    return pycriu.images


@pytest.fixture(scope="module")
def churn_image(tracking, podman_conf):
    """busybox and the integration tests' workload, linked statically."""
    t = time.monotonic()
    d = STATE / "churn"
    d.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(d / "churn"),
                    str(REPO / "test" / "criusec" / "workloads" / "workload.c")], check=True)
    tar = d / "rootfs.tar"
    tar.write_bytes(image.rootfs_tar({"bin/churn": ((d / "churn").read_bytes(), 0o755)}))
    engines.run(["podman", "import", str(tar), IMAGE])
    NOTES.append(f"Podman chain: the image (gcc -static, podman import) in {time.monotonic() - t:.1f} s")
    return IMAGE


@pytest.fixture
def own_chain_keys():
    before = set(chainkeys.chain_keys())
    yield
    for serial in set(chainkeys.chain_keys()) - before:
        chainkeys.unlink(serial)


class Created:
    """Names created directly in some directories while it watches (inotify)."""
    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, *dirs):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.dirs = {libc.inotify_add_watch(self.fd, d.encode(), self.IN_CREATE | self.IN_MOVED_TO): d
                     for d in dirs}

    def names(self):
        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, _, _, n = struct.unpack_from("iIII", buf, i)
                out.append(os.path.join(self.dirs.get(wd, "?"), buf[i + 16:i + 16 + n].split(b"\0")[0].decode()))
                i += 16 + n


class Container:
    """The churn workload as PID 1 of a Podman container, seen from the host
    through /proc (no 'podman exec': each one costs seconds under TCG)."""

    def __init__(self):
        self.refresh()

    def refresh(self):
        out = engines.run(["podman", "inspect", "-f", "{{.State.Pid}} {{.StaticDir}}", NAME]).stdout.split()
        self.pid, self.userdata = int(out[0]), pathlib.Path(out[1])
        self.root = pathlib.Path(f"/proc/{self.pid}/root")

    def running(self):
        r = engines.run(["podman", "inspect", "-f", "{{.State.Running}}", NAME], check=False)
        return r.stdout.strip() == "true"

    def status(self):
        try:
            return (self.root / "tmp" / "status").read_text()
        except FileNotFoundError:
            return ""

    def feed(self, canary, timeout=120):
        fifo = self.root / "tmp" / "in"
        deadline = time.monotonic() + timeout
        while not (fifo.exists() and stat.S_ISFIFO(fifo.stat().st_mode)):
            assert time.monotonic() < deadline, "the workload made no FIFO for its canary"
            time.sleep(0.1)
        with open(fifo, "w") as f:
            f.write(canary + "\n")

    def wait_status(self, pred, what, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s and pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"no {what} from the container in {timeout}s (status {self.status()!r})")

    def generation(self):
        """SIGUSR1: the workload checks every byte of its memory; its generation."""
        before = self.status().split(" ", 1)[0]
        os.kill(self.pid, signal.SIGUSR1)
        s = self.wait_status(lambda s: s.split(" ", 1)[0] != before, "report").split(" ", 1)[1]
        m = re.fullmatch(r"churn OK (\d+)", s)
        assert m, f"the container's memory: {s}"
        return int(m.group(1))

    def wait_rewritten(self):
        start = self.generation()
        deadline = time.monotonic() + 300
        while self.generation() <= start:
            assert time.monotonic() < deadline, "the workload stopped rewriting its memory"
            time.sleep(0.5)
        return start

    def copies_in_memory(self, needle):
        n = 0
        with open(f"/proc/{self.pid}/maps") as maps, open(f"/proc/{self.pid}/mem", "rb", 0) as mem:
            for line in maps:
                f = line.split()
                if "r" not in f[1]:
                    continue
                a, b = (int(x, 16) for x in f[0].split("-"))
                try:
                    mem.seek(a)
                    n += mem.read(b - a).count(needle.encode())
                except (OSError, OverflowError, ValueError):
                    pass
        return n


class Laps:
    """Seconds per step, for the notes at the end of the run."""

    def __init__(self):
        self.t, self.laps = time.monotonic(), []

    def __call__(self, what):
        now = time.monotonic()
        self.laps.append(f"{what} {now - self.t:.1f}")
        self.t = now


@pytest.fixture
def no_default_key():
    """No recipient's private key in CRIU's default place.  When the engine
    tests ran first in this session (on a host with memory tracking), their
    host pair is there (conftest's criu_host): moved aside meanwhile."""
    key = pathlib.Path("/etc/pki/criu/private/key.pem")
    hidden = key.with_name("key.pem.hidden")
    moved = key.exists()
    if moved:
        key.rename(hidden)
    yield
    if moved:
        hidden.rename(key)


def test_pre_checkpoint_chain_encrypted_by_config(churn_image, tmp_path, own_chain_keys, no_default_key):
    lap = Laps()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    # RSA-3072 takes seconds each under TCG: side by side.
    gens = [subprocess.Popen([keygen(), str(keys), n], stdout=subprocess.DEVNULL)
            for n in ("host", "target", "escrow")]
    assert [g.wait(timeout=600) for g in gens] == [0, 0, 0]
    k = {n: (keys / f"{n}-cert.pem", keys / f"{n}-key.pem") for n in ("host", "target", "escrow")}
    # The dumping host: recipients' certificates and its signing pair; no
    # private key of a recipient, neither named nor in CRIU's default place.
    RUNC_CONF.write_text(f"encrypt\ntls-cert {k['target'][0]}\ntls-cert {k['escrow'][0]}\n"
                         f"sign-key {k['host'][1]}\nsign-cert {k['host'][0]}\n")
    assert not os.path.exists("/etc/pki/criu/private/key.pem")
    canary = "CANARY-" + os.urandom(8).hex()
    pre, ckpt = tmp_path / "pre.tar", tmp_path / "ckpt.tar"
    tmpdirs = Created("/tmp", "/var/tmp")
    try:
        engines.run(["podman", "run", "-d", "--name", NAME, "--network", "none", "-e", "CANARY_FROM=/tmp/in",
                     churn_image, "/bin/churn", "churn", "/tmp/status", str(MIB)])
        c = Container()
        c.feed(canary)
        pages, hot = map(int, c.wait_status(lambda s: "ready" in s, "ready").split()[-2:])
        cold = pages - hot
        assert c.copies_in_memory(canary) >= pages // 256, "the canary is not in the container's memory"
        c.generation()
        lap("keys and the container")

        tmpdirs.names()
        r = engines.run(["podman", "container", "checkpoint", "--pre-checkpoint", "--compress", "none",
                         "-e", str(pre), NAME], check=False)
        lap("pre-checkpoint")
        assert r.returncode == 0, f"pre-checkpoint failed:\n{r.stderr}\n{(c.userdata / 'dump.log').read_text()[-3000:]}"
        tmp_pre = tmpdirs.names()
        assert c.running(), "the container stopped at its pre-checkpoint"
        log = (c.userdata / "dump.log").read_text()
        m = re.search(r"The chain key (criusec:[0-9a-f]+) is in root's keyring", log)
        assert m, f"the pre-dump left no chain key:\n{log[-2000:]}"
        assert m.group(1) in chainkeys.chain_keys().values()
        gen = c.wait_rewritten()

        # --keep: dump.log stays in the container's directory, to be read here.
        r = engines.run(["podman", "container", "checkpoint", "--with-previous", "--keep", "--compress", "none",
                         "-e", str(ckpt), NAME], check=False)
        lap("checkpoint")
        assert r.returncode == 0, f"checkpoint failed:\n{r.stderr}\n{(c.userdata / 'dump.log').read_text()[-3000:]}"
        tmp_ck = tmpdirs.names()
        log = (c.userdata / "dump.log").read_text()
        assert f"read with the chain key {m.group(1)}" in log, log[-3000:]
        assert "unlocked with" not in log, "the dump read its parent with a private key"

        stats = {}
        for tar, what, other in ((pre, "pre-checkpoint", "checkpoint"), (ckpt, "checkpoint", "pre-checkpoint")):
            with tarfile.open(tar) as t:
                names = {os.path.normpath(x.name): x for x in t}
                assert f"{what}/cipher.img" in names, sorted(names)
                assert any(re.fullmatch(rf"{what}/pages-\d+\.img", n) for n in names), sorted(names)
                assert not any(n.startswith(other + "/") for n in names), f"{tar.name} holds {other}/ too"
                stats[what] = pycriu_images().loads(t.extractfile(names["stats-dump"]).read())["entries"][0]["dump"]
        parent = names["checkpoint/parent"]
        assert parent.issym() and parent.linkname == "../pre-checkpoint", parent.linkname
        hits = engines.scan([pre, ckpt, *engines.Podman.storage], [canary])[canary]
        assert hits == [], f"the canary is in {hits}"
        s_pre, s_ck = stats["pre-checkpoint"], stats["checkpoint"]
        assert s_pre["pages_written"] >= pages and s_pre["pages_skipped_parent"] == 0, s_pre
        # Where a transparent huge page spans the end of the churned eighth,
        # its dirty bit covers all of it: up to HUGE pages more rewritten.
        assert s_ck["pages_skipped_parent"] >= cold - HUGE, s_ck
        assert hot <= s_ck["pages_written"] <= hot + HUGE + 1024, s_ck
        lap("checks of the archives")

        # The target host: its key, and the signer it trusts.
        engines.run(["podman", "rm", "-f", "-t", "0", NAME])
        RUNC_CONF.write_text(f"tls-key {k['target'][1]}\ntrust {k['host'][0]}\n")
        tmpdirs.names()
        r = engines.run(["podman", "container", "restore", "--keep", "--import-previous", str(pre),
                         "--import", str(ckpt)], check=False)
        lap("restore")
        tmp_rs = tmpdirs.names()
        if r.returncode != 0:
            m = re.search(r"log file: (/\S+?\.log)", r.stderr)
            log = open(m.group(1), errors="replace").read() if m and os.path.exists(m.group(1)) else ""
            raise AssertionError(f"restore failed:\n{r.stderr}\n{log[-3000:]}")
        c.refresh()
        log = (c.userdata / "restore.log").read_text(errors="replace")
        assert log.count(f"unlocked with {k['target'][1]}") == 2, log[-3000:]
        assert len(re.findall(r"cipher\.img: signed by .* \(pinned\)", log)) == 2, log[-3000:]
        assert c.generation() >= gen, "the restored memory is older than the checkpoint"
        c.wait_rewritten()
        assert c.copies_in_memory(canary) >= pages // 256
        # The restore unpacked both archives into Podman's storage (--keep).
        hits = engines.scan(engines.Podman.storage, [canary])[canary]
        assert hits == [], f"after the restore, the canary is in {hits}"
        leftover = [p for p in tmp_pre + tmp_ck + tmp_rs if os.path.exists(p)]
        assert leftover == [], f"Podman left {leftover}"
        lap("checks of the restored container")
        NOTES.append(f"Podman chain, {MIB} MiB: pre-checkpoint {s_pre['pages_written']} pages written; "
                     f"checkpoint --with-previous {s_ck['pages_written']} written, "
                     f"{s_ck['pages_skipped_parent']} from the parent")
        NOTES.append("Podman chain, seconds: " + ", ".join(lap.laps))
        NOTES.append(f"created in /tmp and /var/tmp: by the pre-checkpoint {tmp_pre or 'nothing'}, by the "
                     f"checkpoint {tmp_ck or 'nothing'}, by the restore {tmp_rs or 'nothing'} (removed after)")
    finally:
        engines.run(["podman", "rm", "-f", "-t", "0", NAME], check=False)
        RUNC_CONF.unlink(missing_ok=True)
