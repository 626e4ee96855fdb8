"""A syslog socket of the test's own at /dev/log.

run_with_devlog(fn) runs fn() in a forked child, in a mount namespace of
its own whose /dev is a tmpfs holding bind mounts of every entry of the
real /dev plus a datagram socket "log" the child listens on: what criu
sends to syslog from there reaches the test, and neither the host's /dev
(which may have no /dev/log at all) nor its syslog daemon is touched.
Returns (fn's result, the messages received)."""
import ctypes
import json
import os
import select
import signal
import socket
import tempfile
import traceback

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE, MS_MOVE = 0x1000, 0x4000, 1 << 18, 0x2000


def _mount(libc, src, dst, fstype, flags):
    if libc.mount(src.encode() if src else None, dst.encode(), fstype.encode() if fstype else None,
                  flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {src} on {dst}")


def _private_dev_with_log(libc):
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE)
    new = tempfile.mkdtemp(prefix="devlog-")
    _mount(libc, "tmpfs", new, "tmpfs", 0)
    for name in os.listdir("/dev"):
        src, dst = os.path.join("/dev", name), os.path.join(new, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            _mount(libc, src, dst, None, MS_BIND | MS_REC)
        else:
            open(dst, "w").close()
            _mount(libc, src, dst, None, MS_BIND)
    if os.path.exists(os.path.join(new, "log")):
        os.unlink(os.path.join(new, "log"))
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sk.bind(os.path.join(new, "log"))
    _mount(libc, new, "/dev", None, MS_MOVE)
    return sk


def _drain(sk):
    sk.setblocking(False)
    msgs = []
    while True:
        try:
            msgs.append(sk.recv(65536).decode(errors="replace"))
        except BlockingIOError:
            return msgs


def run_with_devlog(fn, timeout=120):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            sk = _private_dev_with_log(ctypes.CDLL(None, use_errno=True))
            result = fn()
            out = {"result": result, "syslog": _drain(sk)}
            code = 0
        except BaseException:
            out = {"error": traceback.format_exc()}
        with os.fdopen(w, "w") as f:
            json.dump(out, f)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        if not select.select([f], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"no answer from the /dev/log namespace in {timeout}s")
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    if "error" in out:
        raise AssertionError(f"in the /dev/log namespace:\n{out['error']}")
    return out["result"], out["syslog"]
