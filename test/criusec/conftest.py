"""Shared fixtures for criusec's integration tests.

Workloads run as children of the test process, which is made a child
subreaper so that restored trees (re-parented when ``criu restore -d``
exits) stay reapable.  Every criu call has a timeout, and every workload is
killed and reaped at teardown, whatever the test's outcome.
"""
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

from hermetic import private_config_dirs

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRIU = os.environ.get("CRIU") or str(REPO / "build" / "src" / "criu" / "criu")
CRIU_TIMEOUT = 180
PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    if os.geteuid() == 0:
        private_config_dirs()
        # Lazy pages through userfaultfd, and big pipes for remote lazy
        # pages (BRIEF.md; zdtm.sh sets the same): a fresh machine has neither.
        for knob, value in (("vm/unprivileged_userfaultfd", "1"), ("fs/pipe-max-size", "4194304")):
            try:
                pathlib.Path("/proc/sys", knob).write_text(value)
            except OSError:
                pass


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: criu dump/restore of real processes")
        for item in items:
            item.add_marker(skip)


def reap_all():
    """Reap every zombie child (including re-parented grandchildren)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=20):
    """Wait until no pid of the list exists, not even as a zombie: a restore
    of a pid that is still a zombie fails with 'File exists'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap_all()
        if not any(os.path.exists(f"/proc/{p}") for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"pids {pids} still exist after {timeout}s")


def tree_pids(root):
    """The root and all its descendants."""
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workload:
    def __init__(self, binary, mode, workdir, args=(), env=None):
        self.mode = mode
        self.workdir = pathlib.Path(workdir)
        self.status_path = self.workdir / f"{mode}.status"
        self.log = open(self.workdir / f"{mode}.log", "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        # A new session, no terminal: criu needs no --shell-job.
        self.proc = subprocess.Popen(
            [binary, mode, str(self.status_path), *map(str, args)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            cwd=self.workdir, env=full_env, start_new_session=True)
        self.pid = self.proc.pid
        self.last = self.wait_status(lambda s: "ready" in s, "ready")

    def read_status(self):
        try:
            return self.status_path.read_text()
        except FileNotFoundError:
            return ""

    def wait_status(self, pred, what, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.read_status()
            if s and pred(s):
                return s
            if self.proc.poll() is not None and not pid_alive(self.pid):
                raise AssertionError(f"{self.mode} exited ({self.proc.returncode}) waiting for {what}")
            time.sleep(0.02)
        raise AssertionError(f"{self.mode}: no {what} in {timeout}s (status {self.read_status()!r})")

    def report(self):
        """Ask for a fresh report (SIGUSR1) and return its payload."""
        before = self.read_status().split(" ", 1)[0]
        os.kill(self.pid, signal.SIGUSR1)
        s = self.wait_status(lambda s: s.split(" ", 1)[0] != before, "report")
        return s.split(" ", 1)[1]

    def kill(self):
        for p in tree_pids(self.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            pass
        reap_all()
        self.log.close()


class Criu:
    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)

    def run(self, action, imgdir, *args, check=True):
        imgdir = pathlib.Path(imgdir)
        imgdir.mkdir(parents=True, exist_ok=True)
        log = f"{action}.log"
        cmd = [CRIU, action, "-D", str(imgdir), "-o", log, "-v4", *map(str, args)]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=CRIU_TIMEOUT, cwd=self.workdir)
        if check and r.returncode != 0:
            tail = (imgdir / log).read_text()[-4000:] if (imgdir / log).exists() else ""
            raise AssertionError(f"criu {action} failed ({r.returncode}): {r.stderr}\n{tail}")
        return r

    def dump(self, wl, imgdir, *args, check=True):
        pids = tree_pids(wl.pid)
        r = self.run("dump", imgdir, "-t", wl.pid, *args, check=check)
        if r.returncode == 0:
            wait_gone(pids)
        return r

    def restore(self, imgdir, *args, check=True):
        return self.run("restore", imgdir, "-d", *args, check=check)


@pytest.fixture(scope="session")
def workload_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("bin") / "workload"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out),
                    str(HERE / "workloads" / "workload.c")], check=True)
    return str(out)


@pytest.fixture
def workloads(workload_bin, tmp_path):
    started = []

    def start(mode, *args, env=None):
        # Each workload in a directory of its own: two "secrets" share no FIFO or status file.
        n = sum(1 for w in started if w.mode == mode)
        workdir = tmp_path if n == 0 else tmp_path / f"{mode}-{n}"
        workdir.mkdir(exist_ok=True)
        wl = Workload(workload_bin, mode, workdir, args, env)
        started.append(wl)
        return wl

    yield start
    for wl in started:
        wl.kill()


@pytest.fixture
def criu(tmp_path):
    return Criu(tmp_path)
