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
import stat
import tempfile
import traceback

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE, MS_MOVE = 0x1000, 0x4000, 1 << 18, 0x2000


def _mount(libc, src, dst, fstype, flags):
    if libc.mount(src.encode() if src else None, dst.encode(), fstype.encode() if fstype else None,
                  flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {src} on {dst}")


def dev_with_log(new, libc=None):
    """In the caller's own mount namespace (already private): a new /dev,
    a tmpfs mounted on the empty directory new with the old one's entries
    (devices as nodes, directories and other files bind-mounted) beside a
    datagram socket "log", moved over /dev.  Returns
    the bound socket: read it (drain()) before its queue fills, or senders
    block."""
    libc = libc or ctypes.CDLL(None, use_errno=True)
    new = str(new)
    _mount(libc, "tmpfs", new, "tmpfs", 0)
    for name in os.listdir("/dev"):
        src, dst = os.path.join("/dev", name), os.path.join(new, name)
        if name == "log":
            continue
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(dst)
            _mount(libc, src, dst, None, MS_BIND | MS_REC)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            # A node of its own, not a bind mount: /dev/ptmx finds its
            # devpts as "pts" beside it, which a file's bind mount hides.
            os.mknod(dst, st.st_mode, st.st_rdev)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        else:
            open(dst, "w").close()
            _mount(libc, src, dst, None, MS_BIND)
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sk.bind(os.path.join(new, "log"))
    _mount(libc, new, "/dev", None, MS_MOVE)
    return sk


def _private_dev_with_log(new, libc):
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE)
    return dev_with_log(new, libc)


def drain(sk):
    """The messages received so far."""
    sk.setblocking(False)
    msgs = []
    while True:
        try:
            msgs.append(sk.recv(65536).decode(errors="replace"))
        except BlockingIOError:
            return msgs


def run_with_devlog(fn, timeout=120):
    new = tempfile.mkdtemp(prefix="devlog-")  # a mount point in the child's namespace only
    try:
        return _run_with_devlog(fn, new, timeout)
    finally:
        os.rmdir(new)


def _run_with_devlog(fn, new, timeout):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            sk = _private_dev_with_log(new, ctypes.CDLL(None, use_errno=True))
            result = fn()
            out = {"result": result, "syslog": drain(sk)}
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
