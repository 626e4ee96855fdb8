"""A private world for the container-engine tests.

Other agents and test runs use this machine at the same time, so the engines
must change nothing they can see.  isolate() makes the calling process (and
everything it starts afterwards: dockerd, containerd, podman, runc, criu) live
in a mount and network namespace of its own:

- a fresh tmpfs on /run: the engines' sockets, runc's state and criu's kerndat
  cache come and go with the namespace;
- an overlay on /etc and on /var/lib whose upper layer is on that tmpfs: the
  engines' configuration and storage are written there, never to the host,
  and directories that do not exist on the host (/etc/criu, /var/lib/docker)
  are created in the overlay only;
- an empty tmpfs on /etc/criu, /etc/pki/criu (the host's criu configuration,
  keys and marker stay hidden and untouched) and on each engine's storage;
- a network namespace with only a loopback: no bridge, route or firewall
  rule of an engine reaches the host.

Two things are shared with the host and cleaned up by the caller: cgroups
(cgroupfs is one tree for all namespaces; see cgroup_snapshot/cgroup_cleanup)
and the packages installed on the host (scripts/criusec/test-engines.sh).
"""
import ctypes
import os
import subprocess

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_MOVE, MS_REC, MS_PRIVATE = 0x2000, 0x4000, 1 << 18

STATE = "/run/.criusec-engines"
OVERLAID = ("/etc", "/var/lib")
EMPTY = ("/etc/criu", "/etc/pki/criu", "/var/tmp",
         "/var/lib/containers", "/var/lib/docker", "/var/lib/containerd", "/var/lib/cni")
# The cgroups the engines create at the top of each hierarchy (cgroupfs
# manager): Podman's parent, Docker's parent, containerd's namespace.
ENGINE_CGROUPS = ("libpod_parent", "docker", "default")

_libc = ctypes.CDLL(None, use_errno=True)


def _enc(s):
    return None if s is None else s.encode()


def _mount(src, target, fstype, flags=0, data=None):
    enc = _enc
    if _libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or ''} {src} on {target}: {os.strerror(err)}")


def _submounts(top):
    """Mount points strictly below top, outermost first."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted({p for p in points if p.startswith(top + "/")}, key=lambda p: p.count("/"))


def isolate():
    """Enter the private namespaces; idempotent only in the sense that it must
    be called once, before any thread or child exists."""
    if _libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS|CLONE_NEWNET): {os.strerror(err)}")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    # mount(2) directly: mount(8) would first create /run/mount (its utab) on
    # the host's /run.
    _mount("criusec-engines", "/run", "tmpfs", 0, "mode=0755")
    os.makedirs("/run/lock", mode=0o1777)
    os.chmod("/run/lock", 0o1777)
    os.symlink("/dev/shm", "/run/shm")
    for top in OVERLAID:
        base = f"{STATE}/{top.strip('/').replace('/', '-')}"
        for d in ("up", "work", "moved"):
            os.makedirs(f"{base}/{d}")
        # Mounts below the directory (bind-mounted /etc/hosts and the like)
        # would be hidden by the overlay: move them aside and back on top.
        subs = _submounts(top)
        for i, p in enumerate(subs):
            if os.path.isdir(p):
                os.makedirs(f"{base}/moved/{i}")
            else:
                open(f"{base}/moved/{i}", "w").close()
            _mount(p, f"{base}/moved/{i}", None, MS_MOVE)
        _mount("criusec-overlay", top, "overlay", 0,
               f"lowerdir={top},upperdir={base}/up,workdir={base}/work")
        for i, p in enumerate(subs):
            _mount(f"{base}/moved/{i}", p, None, MS_MOVE)
    for d in EMPTY:
        os.makedirs(d, exist_ok=True)
        _mount("criusec-empty", d, "tmpfs", 0, "mode=0755")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def hierarchies(root):
    """Where the engines' cgroups go: below each v1 hierarchy, or at the top
    of a unified (cgroup2-only) tree, "" (the VM layer's guest)."""
    return ["", *os.listdir(root)]


def cgroup_snapshot():
    """The engine cgroups that exist before the tests (to be left alone)."""
    root = "/sys/fs/cgroup"
    found = set()
    for h in hierarchies(root):
        for name in ENGINE_CGROUPS:
            if os.path.isdir(os.path.join(root, h, name)):
                found.add((h, name))
    return found


def cgroup_cleanup(before):
    """Remove the engine cgroups the tests created (empty ones only: rmdir
    refuses a cgroup with tasks or children).  Returns those left behind."""
    root = "/sys/fs/cgroup"
    left = []
    for h in hierarchies(root):
        for name in ENGINE_CGROUPS:
            top = os.path.join(root, h, name)
            if (h, name) in before or not os.path.isdir(top):
                continue
            for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(d)
                except OSError:
                    left.append(d)
    return left


def descendants(pid=None):
    """Every process below pid (default: us), deepest first."""
    pid = pid or os.getpid()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(c) for c in f.read().split()]
                out += kids
                todo += kids
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out[::-1]
