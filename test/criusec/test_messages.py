"""Messages an operator can act on: a refusal is one line, found before any
task is frozen, and reaches the places an engine's operator can see (the
swrk RPC response's cr_errmsg, syslog); CRIU's harmless RLIMIT_NOFILE line
is a warning, not the first error of every log."""
import os
import re
import resource
import subprocess
import sys

import pytest

from devlog import run_with_devlog
from helpers import CRIU, REPO, fill_opts, new_canary, wait_gone

SRC = REPO / "build" / "src"
ERROR = re.compile(r"^\([0-9. ]+\) Error \(([^)]*)\): (.*)$", re.M)


def errors(log):
    """The text of every Error line of a criu log, in order."""
    return [m.group(2) for m in ERROR.finditer(log)]


def pycriu():
    sys.path.insert(0, str(SRC / "lib"))
    import pycriu as mod
    return mod


def rpc(typ, img, **fields):
    """One swrk request; the raw response (success, cr_errno, cr_errmsg)."""
    mod = pycriu()
    c = mod.criu()
    c.use_binary(CRIU)
    req = mod.rpc_pb2.criu_req()
    req.type = typ
    fill_opts(req.opts, img, f"{mod.rpc_pb2.criu_req_type.Name(typ).lower()}.log", **fields)
    try:
        return c._send_req_and_recv_resp(req)
    finally:
        os.close(req.opts.images_dir_fd)


# ---- the RLIMIT_NOFILE line ----

def test_rlimit_nofile_is_a_warning_when_the_hard_limit_suffices(workloads, criu, tmp_path):
    wl = workloads("counter")
    criu.run("dump", tmp_path / "img", "-t", wl.pid, "--leave-running")
    log = (tmp_path / "img" / "dump.log").read_text()
    if "RLIMIT_NOFILE unlimited for self" in log:
        pytest.skip("criu could lift RLIMIT_NOFILE here (it has CAP_SYS_RESOURCE): nothing to warn about")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard >= 4096, f"the hard limit here is {hard}: this test needs one of at least 4096"
    assert not [e for e in errors(log) if "RLIMIT" in e], "the rlimit line is still an error"
    assert re.search(rf"Warn .*Can't raise RLIMIT_NOFILE to \d+ for self \(.*\); going on with {hard}", log), \
        "no warning naming the limit in effect"


def test_rlimit_nofile_too_low_is_still_an_error(workloads, tmp_path):
    wl = workloads("counter")
    img = tmp_path / "img"
    img.mkdir()

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 2048))

    r = subprocess.run([CRIU, "dump", "-t", str(wl.pid), "-D", str(img), "-o", "dump.log", "-v4",
                        "--leave-running"], preexec_fn=low_limit, capture_output=True, text=True, timeout=180)
    log = (img / "dump.log").read_text()
    if "RLIMIT_NOFILE unlimited for self" in log:
        pytest.skip("criu could lift RLIMIT_NOFILE here (it has CAP_SYS_RESOURCE)")
    assert [e for e in errors(log) if "Can't raise RLIMIT_NOFILE" in e and "only 2048 descriptors" in e], \
        f"a hard limit of 2048 is not reported as an error (rc {r.returncode}):\n{log[-2000:]}"


# ---- certificates and signing identities: one line, before anything is frozen ----

def test_unusable_certificates_are_one_line_before_anything_is_frozen(workloads, criu, tmp_path, keys):
    wl = workloads("counter")
    alice = keys["alice"]
    ec_key, ec_cert = tmp_path / "ec-key.pem", tmp_path / "ec-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(ec_key), "-out", str(ec_cert), "-days", "2", "-subj", "/CN=ec"],
                   check=True, capture_output=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    a_dir = tmp_path / "a-directory.pem"
    a_dir.mkdir()
    missing = "/nonexistent/cert.pem"
    cases = [
        # (arguments, the file the line must name once, what it must say)
        (["--tls-cert", missing], missing, ["No such file", "tls-cert"]),
        (["--tls-cert", str(a_dir)], str(a_dir), ["Is a directory", "tls-cert"]),
        (["--tls-cert", str(garbage)], str(garbage), ["not a PEM X.509 certificate"]),
        (["--tls-cert", str(ec_cert)], str(ec_cert), ["not RSA"]),
        ([], "/etc/pki/criu/cert.pem", ["No usable recipient", "No such file", "criusec-keygen --default"]),
        (["--tls-cert", alice[0], "--sign-key", alice[1], "--sign-cert", missing], missing,
         ["No such file", "sign-cert"]),
        (["--tls-cert", alice[0], "--sign-key", missing, "--sign-cert", alice[0]], missing,
         ["No such file", "sign-key"]),
        (["--tls-cert", "relative/cert.pem"], "relative/cert.pem", ["taken from the work directory"]),
    ]
    for i, (args, path, expect) in enumerate(cases):
        img = tmp_path / f"bad-{i}"
        r = criu.dump(wl, img, "--encrypt", *args, check=False)
        log = (img / "dump.log").read_text()
        assert r.returncode != 0, f"case {i}: dumped"
        errs = errors(log)
        assert errs and errs[-1] == "Dumping FAILED.", f"case {i}:\n{log[-2000:]}"
        assert len(errs) == 2, f"case {i}: more than one line:\n" + "\n".join(errs)
        line = errs[0]
        assert line.startswith("criusec: "), f"case {i}: {line}"
        assert line.count(path) == 1, f"case {i}: {path} not named exactly once: {line}"
        for e in expect:
            assert e in line, f"case {i}: no {e!r} in: {line}"
        assert "Freezing" not in log and "Seizing" not in log, f"case {i}: the task was frozen first"
        assert os.path.exists(f"/proc/{wl.pid}"), "a refused dump must leave the task running"
    # pre-dump refuses the same way, before its tree has a root.
    img = tmp_path / "pre-dump"
    r = criu.run("pre-dump", img, "-t", wl.pid, "--encrypt", "--tls-cert", missing, check=False)
    log = (img / "pre-dump.log").read_text()
    errs = errors(log)
    assert r.returncode != 0 and len(errs) == 2 and errs[1] == "Pre-dumping FAILED.", "\n".join(errs)
    assert errs[0].startswith("criusec: Recipient certificate") and "Seizing" not in log
    assert wl.report().startswith("counter"), "the task no longer answers after the refused dumps"


# ---- the reason reaches RPC callers and syslog ----

def test_rpc_restore_refusal_reason_in_cr_errmsg_and_syslog(workloads, criu, tmp_path, keys):
    mod = pycriu()
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0])

    def refused_restore():
        resp = rpc(mod.rpc_pb2.RESTORE, img, tls_key=keys["mallory"][1])
        c = mod.criu()
        c.use_binary(CRIU)
        fill_opts(c.opts, img, "restore-again.log", tls_key=keys["mallory"][1])
        try:
            c.restore()
            exc = None
        except mod.CRIUExceptionExternal as e:
            exc = str(e)
        finally:
            os.close(c.opts.images_dir_fd)
        return {"success": resp.success, "errmsg": resp.cr_errmsg, "exception": exc}

    out, syslog = run_with_devlog(refused_restore)
    log = (img / "restore.log").read_text()
    first = errors(log)[0]
    assert first.startswith("criusec: ") and "mallory-key.pem" in first, f"first error: {first}"
    assert out["success"] is False
    assert first in out["errmsg"], f"cr_errmsg {out['errmsg']!r} is not the first error {first!r}"
    assert out["exception"] and first in out["exception"], f"pycriu's exception: {out['exception']}"

    # One line per failed request, daemon.err, with the reason and where the log is.
    mine = [m for m in syslog if "RESTORE failed: " in m]
    assert len(mine) == 2, f"syslog got: {syslog}"
    assert mine[0].startswith("<27>"), f"not LOG_DAEMON|LOG_ERR: {mine[0]}"
    assert re.search(r"criu\[\d+\]: RESTORE failed: ", mine[0]), mine[0]
    assert mine[0].endswith(f"{first}; log {img / 'restore.log'}"), mine[0]
    assert not os.path.exists(f"/proc/{wl.pid}")


def test_rpc_dump_refusal_reason_in_cr_errmsg_and_syslog(workloads, tmp_path):
    mod = pycriu()
    wl = workloads("counter")
    img = tmp_path / "img"
    img.mkdir()

    def refused_dump():
        resp = rpc(mod.rpc_pb2.DUMP, img, pid=wl.pid, encrypt=True, encrypt_certs=["/nonexistent/cert.pem"],
                   leave_running=True)
        return {"success": resp.success, "errmsg": resp.cr_errmsg}

    out, syslog = run_with_devlog(refused_dump)
    assert out["success"] is False
    assert "criusec: Recipient certificate" in out["errmsg"] and "/nonexistent/cert.pem" in out["errmsg"]
    mine = [m for m in syslog if "DUMP failed: " in m]
    assert len(mine) == 1 and "criusec: Recipient certificate" in mine[0], f"syslog got: {syslog}"
    assert "Freezing" not in (img / "dump.log").read_text()
    assert wl.report().startswith("counter")


def test_a_successful_rpc_request_sends_nothing_to_syslog(workloads, tmp_path, keys):
    mod = pycriu()
    wl = workloads("counter")
    img = tmp_path / "img"
    img.mkdir()

    def dump():
        resp = rpc(mod.rpc_pb2.DUMP, img, pid=wl.pid, encrypt=True, encrypt_certs=[keys["alice"][0]])
        return {"success": resp.success}

    out, syslog = run_with_devlog(dump)
    assert out["success"] is True, (img / "dump.log").read_text()[-2000:]
    wait_gone([wl.pid])
    assert syslog == []
