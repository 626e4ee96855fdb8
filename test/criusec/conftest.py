"""Shared fixtures for criusec's integration tests (their helpers are in helpers.py).

Workloads run as children of the test process, which is made a child
subreaper so that restored trees (re-parented when ``criu restore -d``
exits) stay reapable.  Every criu call has a timeout, and every workload is
killed and reaped at teardown, whatever the test's outcome.
"""
import ctypes
import os
import pathlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hermetic import private_config_dirs
from helpers import (CHAIN_MIB, HERE, LIBDIR, REPO, VERSION_H, Criu, Run, Workload, build_workload, chain_dump,
                     make_increment, new_canary)
from pycriu import criusec  # helpers puts build/src/lib on sys.path

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


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        item.stash[_FAILED] = True


@pytest.fixture(autouse=True)
def _drop_passed_tmp_path(request, tmp_path):
    """A passed test's directory goes once its workloads are gone: a run
    writes many GiB of checkpoints, and pytest keeps its last three runs
    (pytest 7.2 has no retention policy).  A failed test's stays, to read,
    and every one with CRIUSEC_KEEP_TMP=1 (the VM layer reads the dump logs
    after the layer, to tell which tracking they used)."""
    yield
    if not request.node.stash.get(_FAILED, False) and os.environ.get("CRIUSEC_KEEP_TMP") != "1":
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def workload_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "workload", "-pthread")


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


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name in ("alice", "bob", "mallory"):
        subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(d), name], check=True,
                       capture_output=True)
    return {n: (str(d / f"{n}-cert.pem"), str(d / f"{n}-key.pem")) for n in ("alice", "bob", "mallory")}


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("canary-keys")
    subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(d), "k"], check=True, capture_output=True)
    return str(d / "k-cert.pem"), str(d / "k-key.pem")


@pytest.fixture(scope="session")
def canary_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "canary")


@pytest.fixture
def run(request, tmp_path, canary_bin, key_pair):
    r = Run(tmp_path, canary_bin, key_pair, getattr(request, "param", None))
    yield r
    r.kill()


@pytest.fixture(scope="session")
def memcanary_bin(tmp_path_factory):
    return build_workload(tmp_path_factory, "memcanary")


@pytest.fixture
def memcanary(memcanary_bin, tmp_path):
    started = []

    def start(tag, big_mib=0, mode="memcanary", sysv=True):
        wd = tmp_path / ("wl-" + tag)
        wd.mkdir()
        canary = new_canary()
        env = {"CANARY": canary} if sysv else {"CANARY": canary, "NO_SYSV": "1"}
        wl = Workload(memcanary_bin, mode, wd, (big_mib,) if big_mib else (), env)
        started.append(wl)
        assert wl.report() == f"{mode} OK {big_mib}"
        return wl, canary

    yield start
    for wl in started:
        wl.kill()


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


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth-keys")
    out = {}
    for name in ("alice", "mallory"):
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = d / f"{name}.pem"
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        out[name] = (k, str(path))
    return out


@pytest.fixture
def chain(workloads, criu, tmp_path, keys):
    """A genuine signed chain a <- b of one process (16 MiB of checked memory), and
    tmp_path/other, a third checkpoint of it."""
    wl = workloads("memory", CHAIN_MIB)
    a, b = tmp_path / "a", tmp_path / "b"
    chain_dump(criu, wl, a, keys, leave_running=True)
    chain_dump(criu, wl, tmp_path / "other", keys, leave_running=True)
    chain_dump(criu, wl, b, keys)
    signer = criusec.Signer.from_files(keys["alice"][1], keys["alice"][0])
    moved = make_increment(b, a, wl.pid, keys["alice"][1], signer)
    assert moved * criusec.PAGE_SIZE >= (CHAIN_MIB << 20) // 2
    return wl, a, b, signer


@pytest.fixture
def mem_pristine(memcanary, criu, tmp_path, keys):
    wl, _ = memcanary("pristine")
    img = tmp_path / "pristine"
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0])
    return wl, img
