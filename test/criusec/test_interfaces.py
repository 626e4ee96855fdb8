"""Encryption reached through config files and swrk RPC (pycriu), as runc,
crun and Podman reach criu, and cipher.img as CRIT shows it."""
import json
import os
import subprocess
import sys

import pytest
from helpers import CRIU, MAGIC, REPO, new_canary, wait_gone


SRC = REPO / "build" / "src"


def crit_show(path):
    env = dict(os.environ, PYTHONPATH=f"{SRC / 'lib'}:{SRC / 'crit'}")
    r = subprocess.run(["/usr/bin/python3", "-m", "crit", "show", str(path)], env=env,
                       capture_output=True, text=True, timeout=60, check=True)
    return json.loads(r.stdout)


def test_config_file_read_twice(workloads, criu, tmp_path, keys):
    conf = tmp_path / "runc.conf"
    conf.write_text(f"encrypt\ntls-cert {keys['alice'][0]}\n")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    os.environ["CRIU_CONFIG_FILE"] = str(conf)
    try:
        criu.dump(wl, tmp_path / "img", "--config", conf)
    finally:
        del os.environ["CRIU_CONFIG_FILE"]
    header = crit_show(tmp_path / "img" / "cipher.img")
    entry = header["entries"][0]
    assert entry["version"] == 2
    assert len(entry["recipients"]) == 1, "a config file read twice added a recipient twice"
    assert (tmp_path / "img" / "pstree.img").read_bytes()[:8] == MAGIC
    criu.restore(tmp_path / "img", "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_rpc_fields(workloads, criu, tmp_path, keys):
    sys.path.insert(0, str(SRC / "lib"))
    import pycriu

    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    img.mkdir()
    c = pycriu.criu()
    c.use_binary(CRIU)
    c.opts.images_dir_fd = os.open(img, os.O_DIRECTORY)
    c.opts.pid = wl.pid
    c.opts.log_file = "dump.log"
    c.opts.log_level = 4
    c.opts.encrypt = True
    c.opts.encrypt_certs.append(keys["alice"][0])
    c.opts.encrypt_certs.append(keys["bob"][0])
    c.dump()
    os.close(c.opts.images_dir_fd)
    wait_gone([wl.pid])
    assert len(crit_show(img / "cipher.img")["entries"][0]["recipients"]) == 2
    assert (img / f"core-{wl.pid}.img").read_bytes()[:8] == MAGIC
    criu.restore(img, "--tls-key", keys["bob"][1])
    assert wl.report() == "secrets OK"


def test_check_reports_engine():
    r = subprocess.run([CRIU, "check", "--feature", "criusec"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "self-test passed, AEAD aes-256-gcm" in r.stdout + r.stderr or \
        "self-test passed, AEAD chacha20-poly1305" in r.stdout + r.stderr


def page_threads(prefix=(), preexec_fn=None):
    """The page threads criu reports, run under prefix (taskset) or preexec_fn."""
    import re
    r = subprocess.run([*prefix, CRIU, "check", "--feature", "criusec"], capture_output=True, text=True,
                       timeout=60, preexec_fn=preexec_fn)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"pages on (\d+) thread", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return int(m.group(1))


def test_page_threads_follow_the_affinity_mask():
    """The dump's page pipeline sizes its helpers by the CPUs criu may use, not a constant."""
    cpus = len(os.sched_getaffinity(0))
    assert page_threads() == min(cpus, 16)
    assert page_threads(("taskset", "-c", "0")) == 1
    if cpus >= 2:
        assert page_threads(("taskset", "-c", "0,1")) == 2


def test_page_threads_follow_a_cgroup_cpu_quota(tmp_path):
    """A container's CPU quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us) bounds them too."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    cg = None
    for mount, files in (("/sys/fs/cgroup", ("cpu.max",)), ("/sys/fs/cgroup/cpu", ("cpu.cfs_quota_us",))):
        if os.path.exists(os.path.join(mount, "cgroup.procs")) and \
                (files[0] != "cpu.max" or "cpu" in open(os.path.join(mount, "cgroup.subtree_control")).read()):
            cg = (mount, files[0])
            break
    if not cg:
        pytest.skip("no cgroup v2 with the cpu controller, nor a v1 cpu hierarchy, to set a quota in")
    d = os.path.join(cg[0], f"criusec-test-{os.getpid()}")
    os.mkdir(d)
    try:
        with open(os.path.join(d, cg[1]), "w") as f:
            f.write("100000 100000" if cg[1] == "cpu.max" else "100000")
        if cg[1] != "cpu.max":
            with open(os.path.join(d, "cpu.cfs_period_us"), "w") as f:
                f.write("100000")

        def enter():
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        assert page_threads(preexec_fn=enter) == 1
    finally:
        os.rmdir(d)


def test_version_names_criusec():
    r = subprocess.run([CRIU, "--version"], capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert lines[0] == "Version: 4.2.1"  # go-criu parses this line
    assert any(line.startswith("criusec ") for line in lines)
