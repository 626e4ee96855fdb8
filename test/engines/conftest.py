"""Fixtures of the container-engine tests (make test-engines).

Before any test, the session moves into namespaces of its own
(isolation.py): the engines, their daemons and criu see private /run, /etc
and /var/lib, and an empty /etc/criu and /etc/pki/criu, so neither the host
nor a concurrent run sees any of their files.  The session is a child
subreaper: conmon and the containerd shims, which daemonize, stay its
descendants, and whatever is left is killed when the session ends.

criu is the one the engines find on PATH: the installed package's
/usr/sbin/criu (scripts/criusec/test-engines.sh installs build/deb first).
CRIUSEC_TEST_CRIU=/path/to/criu tests another build instead: a private
directory with a 'criu' link to it goes first on PATH, for the daemons too.
"""
import contextlib
import ctypes
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import engines
import image
import isolation

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "test" / "criusec"))
import devlog  # noqa: E402 (the integration tests' /dev/log of a test's own)
STATE = pathlib.Path(isolation.STATE)
PR_SET_CHILD_SUBREAPER = 36

# (engine, plain|encrypted, checkpoint|restore, seconds), printed at the end.
TIMES = []
# (what, bytes), printed at the end.
SIZES = []
# (engine, what, stderr, whether criu's log was there to read, whether the
# engine's output names criusec's reason, criu's syslog line): what an
# operator sees when criu refuses.
MESSAGES = []
# Lines for the end of the run (what a test found out, its times).
NOTES = []
# What reached /dev/log in the session's namespaces (criu under every
# engine sends a failed request's reason there), in order.
SYSLOG = []


def _read_syslog(sk):
    while True:
        SYSLOG.append(sk.recv(65536).decode(errors="replace"))


def record(engine, mode, action, seconds):
    TIMES.append((engine, mode, action, seconds))


def pytest_configure(config):
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    config.criusec_cgroups = isolation.cgroup_snapshot()
    isolation.isolate()
    # A /dev/log of the run's own, read all along (a full queue would block
    # whoever logs): criu's syslog line of a refusal, under every engine.
    (STATE / "dev").mkdir()
    sk = devlog.dev_with_log(STATE / "dev")
    threading.Thread(target=_read_syslog, args=(sk,), daemon=True).start()
    # For test-engines.sh: after the run, no process may be left in it.
    if os.environ.get("CRIUSEC_ENGINES_NSFILE"):
        with open(os.environ["CRIUSEC_ENGINES_NSFILE"], "w") as f:
            f.write(os.readlink("/proc/self/ns/mnt"))
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if os.environ.get("CRIUSEC_TEST_CRIU"):
        bindir = STATE / "bin"
        bindir.mkdir()
        (bindir / "criu").symlink_to(os.path.abspath(os.environ["CRIUSEC_TEST_CRIU"]))
        path = f"{bindir}:{path}"
    os.environ["PATH"] = path


def pytest_unconfigure(config):
    if not hasattr(config, "criusec_cgroups"):
        return
    left = kill_descendants()
    cg = isolation.cgroup_cleanup(config.criusec_cgroups)
    if left or cg:
        print(f"\ntest-engines: LEFT BEHIND: processes {left}, cgroups {cg}")


def kill_descendants():
    """SIGKILL every process still below us; return those that survived."""
    for _ in range(3):
        pids = isolation.descendants()
        if not pids:
            return []
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and isolation.descendants():
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            time.sleep(0.1)
    return isolation.descendants()


def criu_version():
    try:
        return subprocess.run(["criu", "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except FileNotFoundError:
        return ""


def pytest_collection_modifyitems(config, items):
    why = None
    if os.geteuid() != 0:
        why = "needs root: container engines, namespaces and criu"
    elif "criusec" not in criu_version():
        why = ("the criu on PATH is not criusec: run 'make test-engines' (installs build/deb), "
               "or set CRIUSEC_TEST_CRIU=/path/to/criu")
    if why:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=why))


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        tr = terminalreporter
        tr.section("checkpoint and restore times (s, wall clock, one run each)")
        rows = {}
        for engine, mode, action, s in TIMES:
            rows.setdefault(engine, {})[f"{action} {mode}"] = s
        cols = ["checkpoint plain", "checkpoint encrypted", "restore plain", "restore encrypted"]
        tr.write_line(f"{'engine':<15}" + "".join(f"{c:>22}" for c in cols))
        for engine, v in rows.items():
            tr.write_line(f"{engine:<15}" + "".join(
                f"{v[c]:>22.2f}" if c in v else f"{'-':>22}" for c in cols))
    if SIZES:
        terminalreporter.section("checkpoint sizes")
        for what, n in SIZES:
            terminalreporter.write_line(f"{what}: {n} bytes")
    if NOTES:
        terminalreporter.section("notes")
        for line in NOTES:
            terminalreporter.write_line(line)
    if MESSAGES:
        terminalreporter.section("what the engines print when criu refuses (last line), and syslog")
        for engine, what, err, log, shown, line in MESSAGES:
            last = (err.strip().splitlines() or [""])[-1]
            log = "criu's log read" if log else "criu's log gone"
            shown = "shows criusec's reason" if shown else "no reason shown"
            terminalreporter.write_line(f"{engine}, {what} ({log}; {shown}): {last[:300]}")
            terminalreporter.write_line(f"    syslog: {line[:300]}")


class Daemon:
    """A daemon of the session, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, name, cmd, ready, timeout=90):
        self.name = name
        self.log = STATE / f"{name}.log"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def need(*programs):
    for p in programs:
        if shutil.which(p) is None:
            pytest.skip(f"needs {p} (Debian package; make test-engines installs it)")


class CriuHost:
    """criu's configuration as the engines' criu sees it: files in /etc/criu
    (the session's private tmpfs) only.  other_cert/other_key: a pair that
    is not the host's (a wrong key; an untrusted signer)."""
    etc = pathlib.Path("/etc/criu")
    conf = etc / "default.conf"
    marker = etc / "encryption-required"
    cert = pathlib.Path("/etc/pki/criu/cert.pem")
    key = pathlib.Path("/etc/pki/criu/private/key.pem")

    def __init__(self, other_cert, other_key):
        self.other_cert, self.other_key = other_cert, other_key

    def config(self, *lines):
        self.conf.write_text("".join(line + "\n" for line in lines))

    def require_encryption(self):
        self.marker.touch()

    @contextlib.contextmanager
    def key_hidden(self):
        hidden = self.key.with_suffix(".hidden")
        self.key.rename(hidden)
        try:
            yield
        finally:
            hidden.rename(self.key)

    def reset(self):
        """Nothing but an empty default.conf: whatever a test put in
        /etc/criu (marker, trust files) is gone."""
        for p in self.etc.iterdir():
            p.unlink()
        self.config()


def keygen():
    """The packaged criusec-keygen, or the repository's for a development build."""
    installed = "/usr/sbin/criusec-keygen"
    if not os.environ.get("CRIUSEC_TEST_CRIU") and os.path.exists(installed):
        return installed
    return str(REPO / "pki" / "criusec-keygen")


def archive_tool():
    """The packaged criusec-archive, or the repository's for a development build."""
    installed = "/usr/sbin/criusec-archive"
    if not os.environ.get("CRIUSEC_TEST_CRIU") and os.path.exists(installed):
        return installed
    return str(REPO / "pki" / "criusec-archive")


@pytest.fixture(scope="session")
def criu_host():
    # The host pair in CRIU's default places (in the private /etc/pki/criu):
    # "encrypt" alone in default.conf then encrypts for it, and restore finds
    # its key without any option.  A second pair is the wrong key.
    subprocess.run([keygen(), "--default"], check=True, capture_output=True)
    keys = STATE / "keys"
    subprocess.run([keygen(), str(keys), "other"], check=True, capture_output=True)
    host = CriuHost(str(keys / "other-cert.pem"), str(keys / "other-key.pem"))
    host.reset()
    return host


@pytest.fixture(autouse=True)
def fresh_criu_config(request):
    yield
    if "criu_host" in request.fixturenames:
        request.getfixturevalue("criu_host").reset()


@pytest.fixture(scope="session")
def rootfs():
    if not os.path.exists(image.BUSYBOX):
        pytest.skip(f"needs {image.BUSYBOX} (apt-get install busybox-static)")
    d = STATE / "image"
    d.mkdir()
    return image.build(d)


@pytest.fixture(scope="session")
def podman_conf():
    """Podman, runc and conmon installed, and configured for this machine."""
    need("podman", "runc", "conmon")
    conf = pathlib.Path("/etc/containers/containers.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(image.CONTAINERS_CONF)


@pytest.fixture(scope="session")
def podman_ready(podman_conf, rootfs):
    engines.run(["podman", "import", str(rootfs["tar"]), engines.IMAGE])
    yield
    engines.run(["podman", "rm", "-a", "-f", "-t", "0"], check=False)


@pytest.fixture(scope="session")
def containerd_daemon():
    need("containerd", "ctr", "runc")
    conf = STATE / "containerd.toml"
    conf.write_text(image.CONTAINERD_TOML)
    sock = engines.Containerd.sock
    d = Daemon("containerd", ["containerd", "--config", str(conf)],
               lambda: os.path.exists(sock) and subprocess.run(
                   ["ctr", "--address", sock, "version"], capture_output=True).returncode == 0)
    yield
    d.stop()


@pytest.fixture(scope="session")
def docker_ready(containerd_daemon, rootfs):
    need("dockerd", "/usr/bin/docker")
    docker = engines.Docker(STATE)
    d = Daemon("dockerd", ["dockerd", "--experimental", "--data-root", "/var/lib/docker",
                           "--exec-root", "/run/docker", "-H", docker.sock,
                           "--pidfile", "/run/docker.pid", "--containerd", engines.Containerd.sock,
                           "--bridge", "none", "--iptables=false", "--ip-forward=false",
                           "--ip-masq=false"],
               lambda: subprocess.run(docker.cmd("info"), capture_output=True).returncode == 0)
    engines.run(docker.cmd("import", str(rootfs["tar"]), engines.IMAGE))
    yield
    ids = engines.run(docker.cmd("ps", "-a", "-q"), check=False).stdout.split()
    if ids:
        engines.run(docker.cmd("rm", "-f", *ids), check=False)
    d.stop()


@pytest.fixture(scope="session")
def containerd_ready(containerd_daemon, rootfs):
    ctr = engines.Containerd(STATE)
    engines.run(ctr.cmd("image", "import", str(rootfs["oci"])))
    yield
    for line in engines.run(ctr.cmd("container", "ls", "-q"), check=False).stdout.split():
        ctr.remove(line)


MODES = ["podman-export", "podman-image", "docker", "containerd"]


def make_engine(request, mode, work):
    if mode.startswith("podman"):
        request.getfixturevalue("podman_ready")
        return engines.Podman(work, mode.split("-", 1)[1])
    if mode == "docker":
        request.getfixturevalue("docker_ready")
        return engines.Docker(work)
    request.getfixturevalue("containerd_ready")
    return engines.Containerd(work)


@pytest.fixture(params=MODES)
def engine(request, tmp_path):
    return make_engine(request, request.param, tmp_path)
