"""Helpers shared by criusec's integration tests: where things are, the
workloads and criu runs, canaries, refusals, page servers and lazy pages,
crit and libcriu, and synthetic checkpoints made with pycriu.  Test
modules import from here, never from each other; fixtures are in
conftest.py, certificates in pki_util.py."""
import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import pathlib
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HERE = pathlib.Path(__file__).resolve().parent


REPO = HERE.parent.parent


SRC = REPO / "build" / "src"
# pycriu and crit as built (pycriu.criusec is the reader under test)
sys.path[:0] = [str(SRC / "lib"), str(SRC / "crit")]
import pycriu  # noqa: E402
from pycriu import criusec  # noqa: E402

CRIU = os.environ.get("CRIU") or str(REPO / "build" / "src" / "criu" / "criu")


CRIU_TIMEOUT = 180


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


MAGIC = b"CRIUSEC\x01"


# Page images are not streams: the page cipher encrypts each page in place
# (test_pages.py); their tags are in pagetags-N.img streams.
PAGE_PREFIX = "pages-"


PLAINTEXT_BY_DESIGN = {"cipher.img", "stats-dump", "stats-restore", "dump.log", "restore.log"}


def new_canary():
    return "CANARY-" + secrets.token_hex(16)


def files_with(imgdir, needle):
    hits = []
    for p in pathlib.Path(imgdir).rglob("*"):
        if p.is_file() and needle in p.read_bytes():
            hits.append(p.name)
    return hits


def dir_digest(imgdir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(imgdir).iterdir()) if p.is_file() and not p.name.endswith(".log")}


def refused(criu, img, pid, key, expect=None):
    """Restore must fail, name what is wrong, leave no task and no image changed."""
    before = dir_digest(img)
    r = criu.restore(img, "--tls-key", key, check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, "a damaged checkpoint was restored"
    wait_gone([pid], timeout=10)
    assert dir_digest(img) == before, "restore changed the images"
    if expect:
        assert expect in log, f"no {expect!r} in the error:\n{log[-2000:]}"
    return log


def build_workload(tmp_path_factory, name, *flags):
    """test/criusec/workloads/NAME.c, built into a fresh directory: its path."""
    out = tmp_path_factory.mktemp("bin") / name
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", *flags, "-o", str(out), str(HERE / "workloads" / f"{name}.c")],
                   check=True)
    return str(out)


def damaged_copy(tmp_path, img, tag):
    dst = tmp_path / tag
    shutil.copytree(img, dst, symlinks=True)
    for log in dst.glob("*.log"):
        log.unlink()
    return dst


def hex_canary(nhex=24):
    return secrets.token_hex(nhex // 2)


class Run:
    """One path's round trip: plain dump (left running), encrypted dump,
    restore, each with its own images dir and a separate work dir."""

    def __init__(self, tmp_path, canary_bin, keys, compress=None):
        self.compress = compress  # None, or --compress-alg's name
        self.tmp = tmp_path
        self.bin = canary_bin
        self.cert, self.key = keys
        self.started = []

    def start(self, mode, *args, canary):
        wl = Workload(self.bin, mode, self.tmp, args, env={"CANARY": canary})
        self.started.append(wl)
        return wl

    def criu(self, action, name, *args, check=True):
        img, work = self.tmp / name, self.tmp / (name + "-work")
        img.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        log = f"{action}.log"
        cmd = [CRIU, action, "-D", str(img), "-W", str(work), "-o", log, "-v4", *map(str, args)]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=CRIU_TIMEOUT, cwd=self.tmp)
        r.log = (work / log).read_text(errors="replace") if (work / log).exists() else ""
        if check and r.returncode != 0:
            raise AssertionError(f"criu {action} -D {name} failed ({r.returncode}): {r.stderr}\n"
                                 + "\n".join(r.log.splitlines()[-40:]))
        return r

    def plain_dump(self, wl, *args, check=True):
        return self.criu("dump", "plain", "-t", wl.pid, "--leave-running", *args, check=check)

    def encrypted_dump(self, wl, *args):
        pids = tree_pids(wl.pid)
        z = ("--compress", "--compress-alg", self.compress) if self.compress else ()
        r = self.criu("dump", "img", "-t", wl.pid, "--encrypt", "--tls-cert", self.cert, *z, *args)
        wait_gone(pids)
        return r

    def restore(self, *args):
        return self.criu("restore", "img", "-d", "--tls-key", self.key, *args)

    def dirs(self, name):
        return self.tmp / name, self.tmp / (name + "-work")

    def kill(self):
        for wl in self.started:
            wl.kill()


REGIONS = ("heap", "stack", "shared", "memfd", "sysv")


def page_images(img):
    return sorted(p for p in pathlib.Path(img).iterdir() if p.name.startswith("pages-"))


def biggest_pages(img):
    return max(page_images(img), key=lambda p: p.stat().st_size).name


def bind_to_parent(child, parent, key, signer=None):
    """Make the full dump child an increment over parent: its header binds
    parent (format 10.5), and its parent link points there."""
    criusec.Checkpoint(child, keys=key).reseal(signer=signer, parent=criusec.Checkpoint(parent, keys=key))
    (child / "parent").symlink_to(os.path.relpath(parent, child))


def key_args(key):
    """--tls-key for a key, or for each of a list of keys (rotation)."""
    return [a for k in ([key] if isinstance(key, str) else key) for a in ("--tls-key", k)]


def lazy_restore(criu, img, key, tmp_path, *daemon_args, restore_args=()):
    daemon = subprocess.Popen([CRIU, "lazy-pages", "-D", str(img), "-o", "lazy-pages.log", "-v4",
                               *key_args(key), *daemon_args], cwd=tmp_path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = img / "lazy-pages.socket"
        deadline = time.monotonic() + 20
        while not sock.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r = criu.restore(img, "--lazy-pages", *key_args(key), *restore_args, check=False)
        return r, daemon
    except Exception:
        daemon.kill()
        raise


needs_uffd = pytest.mark.skipif(not os.path.exists("/proc/sys/vm/unprivileged_userfaultfd"),
                                reason="the kernel has no userfaultfd: lazy pages cannot run here")


def lazy_restored(wl, img, r, daemon, report="memcanary OK 0"):
    """The lazy restore succeeded, the task's memory is intact, the daemon sent it all."""
    assert r.returncode == 0, (img / "restore.log").read_text()[-3000:]
    assert wl.report() == report
    assert daemon.wait(timeout=60) == 0, (img / "lazy-pages.log").read_text()[-3000:]


def start_page_server(img, tmp_path, *args):
    """criu page-server on a free port, once it listens."""
    port = str(free_port())
    server = subprocess.Popen([CRIU, "page-server", "-D", str(img), "-o", "page-server.log", "-v4",
                               "--address", "127.0.0.1", "--port", port, *args], cwd=tmp_path,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.poll() is None:
        if f":{int(port):04X}" in open("/proc/net/tcp").read():
            break
        time.sleep(0.05)
    return server, port


def remote_lazy_restore(criu, img, key, tmp_path, *server_args):
    """criu page-server --lazy-pages serves the images; lazy-pages fetches from it."""
    server, port = start_page_server(img, tmp_path, "--lazy-pages", *key_args(key), *server_args)
    r, daemon = lazy_restore(criu, img, key, tmp_path, "--page-server", "--address", "127.0.0.1", "--port", port)
    return r, daemon, server


def touched_and_killed(wl):
    """Make the task read all its memory once the lazy-pages daemon gave up:
    what never arrived is poisoned, so the task dies of SIGBUS and never
    reports on memory that was never checked.  (If the daemon gave up before
    the restore finished, the restore failed and killed it already.)"""
    before = wl.read_status()
    try:
        os.kill(wl.pid, signal.SIGUSR1)
    except ProcessLookupError:
        pass
    try:
        wait_gone([wl.pid], timeout=20)
    finally:
        if os.path.exists(f"/proc/{wl.pid}"):
            os.kill(wl.pid, signal.SIGKILL)
    assert wl.read_status() == before, "the task ran on with memory that was never checked"


def server_refused(wl, img, daemon, server, *expect):
    """The page server serving a lazy restore refused (each of expect in its
    log): the lazy-pages daemon gives up, and the task dies touching what
    never arrived.  Both daemons are gone after."""
    try:
        assert server.wait(timeout=60) != 0, "the page server served what it must refuse"
        log = (img / "page-server.log").read_text()
        for e in expect:
            assert e in log, log[-3000:]
        daemon.wait(timeout=60)
        touched_and_killed(wl)
    finally:
        daemon.kill()
        server.kill()


def tls_opts(keys):
    cert, key = keys["alice"]
    return ["--tls", "--tls-no-cn-verify", "--tls-cacert", cert, "--tls-cert", cert, "--tls-key", key]


def dump_through_page_server(criu, wl, tmp_path, keys, tag, *dump_args, tls=True):
    """Dump to DIR/dump with pages going to a page server writing DIR/srv."""
    base = tmp_path / tag
    base.mkdir()
    srv, dump = base / "srv", base / "dump"
    srv.mkdir()
    server, port = start_page_server(srv, tmp_path, *(tls_opts(keys) if tls else []))
    try:
        r = criu.dump(wl, dump, "--page-server", "--address", "127.0.0.1", "--port", port,
                      *(tls_opts(keys) if tls else []), *dump_args, check=False)
        if r.returncode == 0:
            assert server.wait(timeout=60) == 0, (srv / "page-server.log").read_text()[-3000:]
    finally:
        server.kill()
        server.wait()
    return r, srv, dump


def merged(base, srv, dump):
    """What an operator restores: the page server's images beside the dump's."""
    img = base / "merged"
    img.mkdir()
    for d in (srv, dump):
        for p in d.iterdir():
            if p.name.endswith(".img"):
                shutil.copy2(p, img / p.name)
    return img


LIBDIR = REPO / "build" / "src" / "lib" / "c"


# criu.h needs rpc.pb-c.h and version.h; criu/include as a whole would
# shadow system headers (its string.h), so version.h alone is copied.
VERSION_H = REPO / "build" / "src" / "criu" / "include" / "version.h"


def run_client(client, *args, env=None):
    r = subprocess.run([client, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=180, env=env)
    return r


def log_tail(path):
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


DEFAULT_TRUST = pathlib.Path("/etc/criu/trusted-signers.pem")


DEFAULT_CONF = pathlib.Path("/etc/criu/default.conf")


def restore_refused(criu, img, pid, *args, expect=()):
    """criu restore must fail with each of expect in its log, leave no task, change no image."""
    before = dir_digest(img)
    r = criu.restore(img, *args, check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, f"restored a checkpoint that must be refused:\n{log[-3000:]}"
    wait_gone([pid], timeout=10)
    assert dir_digest(img) == before, "a refused restore changed the images"
    for e in expect:
        assert e in log, f"no {e!r} in the refusal:\n{log[-3000:]}"
    return log


def fill_opts(opts, img, log_file, **fields):
    """criu_opts of a request on the images in img (a descriptor the caller
    closes: opts.images_dir_fd), logging at -v4; list values are repeated fields."""
    opts.images_dir_fd = os.open(img, os.O_DIRECTORY)
    opts.log_file = log_file
    opts.log_level = 4
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(opts, k).extend(v)
        else:
            setattr(opts, k, v)


CRIT_ENV = dict(os.environ, PYTHONPATH=f"{SRC / 'lib'}:{SRC / 'crit'}")


def run_crit(*args):
    """crit's main() in this process (a fresh module each time: its
    explorers cache per directory); (exit code, stdout, stderr)."""
    import crit.__main__ as cm
    cm = importlib.reload(cm)
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["crit", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cm.main()
    except SystemExit as e:
        code = e.code or 0
    except Exception as e:  # as the traceback would end
        code, err = 1, io.StringIO(f"{type(e).__name__}: {e}")
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def refusal(r, *needles):
    """One line on stderr, naming what is wrong; exit 1; no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crit: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def crit(*args, check=True, stdin=None):
    r = subprocess.run(["/usr/bin/python3", "-m", "crit", *map(str, args)], env=CRIT_ENV, stdin=stdin,
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"crit {args} failed ({r.returncode}): {r.stderr}")
    return r


def hkdf_expand(prk, info, n):
    return HKDFExpand(SHA256(), n, info).derive(prk)


def spec_page(prk, name, v, i, page):
    """The page format exactly as specified, with the raw primitives."""
    xts_key = hkdf_expand(prk, b"criusec v1 pages xts" + b"\x00" + name, 64)
    tag_key = hkdf_expand(prk, b"criusec v1 pages tag" + b"\x00" + name, 32)
    tweak = v.to_bytes(8, "little") + i.to_bytes(8, "little")
    enc = Cipher(algorithms.AES(xts_key), modes.XTS(tweak)).encryptor()
    ct = enc.update(page) + enc.finalize()
    tag = AESGCM(tag_key).encrypt(i.to_bytes(8, "little") + bytes(4), b"", tweak + ct)
    return ct, tag


def page_of(seed):
    return hashlib.sha256(seed).digest() * (4096 // 32)


def image(magic_name, entries):
    return pycriu.images.dumps({"magic": magic_name, "entries": entries})


def write_cipher_img_v1(d, mk, ckpt_id, pub, parent_id=None, aead=1, chunk=65536):
    """A format-1 header, as criusec 1.0 wrote it."""
    h = {"version": 1, "ckpt_id": ckpt_id, "has_parent": 1 if parent_id else 0, "parent_id": parent_id or b"",
         "aead": aead, "chunk_size": chunk,
         "recipients": [(criusec.fingerprint(pub), 1, pub.encrypt(mk, padding.PKCS1v15()))]}
    h["mac"] = criusec.header_mac(criusec.prk_of(mk, ckpt_id), h)
    ce = pycriu.images.pb.cipher_entry(version=1, ckpt_id=ckpt_id, aead=aead, chunk_size=chunk, mac=h["mac"])
    if parent_id:
        ce.parent_id = parent_id
    for fpr, alg, wrapped in h["recipients"]:
        ce.recipients.add(fingerprint=fpr, wrap_alg=alg, wrapped_key=wrapped)
    m = pycriu.images.magic.by_name
    body = ce.SerializeToString()
    (d / "cipher.img").write_bytes(struct.pack("<iii", m["IMG_COMMON"], m["CIPHER"], len(body)) + body)


def manifest_bytes(entries):
    """cipher-manifest.img's plaintext, built here with protobuf: [(kind, name, size, digest)];
    size None: format 1 (no sizes, no digests)."""
    e = pycriu.images.pb.cipher_manifest_entry()
    for kind, name, size, digest in entries:
        e.images.append(name)
        e.kinds.append(kind)
        if size is not None:
            e.sizes.append(size)
            e.digests.append(digest)
    m = pycriu.images.magic.by_name
    body = e.SerializeToString()
    return struct.pack("<iii", m["IMG_COMMON"], m["CIPHER_MANIFEST"], len(body)) + body


class Synth:
    """An encrypted checkpoint of one task (pid 42) whose pagemap is
    `layout`: [(vaddr, nr_pages, flags)].  Present pages get contents
    page_of(vaddr); pages-1.img and pagetags-1.img are made with
    spec_page(), not with the module under test.

    Format 2 (version=2): signed by signer (a criusec.Signer) or unsigned;
    parent: the parent Synth (bound with its key), or (parent_id, binding)
    as a forger would write them.  recipients: more public keys."""

    def __init__(self, d, key, layout, parent=None, tags=True, aead=1, version=2, signer=None, ckpt_id=None,
                 created=None, recipients=()):
        d.mkdir(parents=True, exist_ok=True)
        self.dir, self.mk, self.ckpt_id = d, os.urandom(32), ckpt_id or os.urandom(16)
        self.version, self.pubs = version, [key.public_key(), *recipients]
        if version == 1:
            write_cipher_img_v1(d, self.mk, self.ckpt_id, key.public_key(), parent and parent.ckpt_id, aead)
        self.aead = aead
        self.manifest = []
        self.plain = {}
        prk = criusec.prk_of(self.mk, self.ckpt_id)
        pages, ptags, i = [], [], 0
        for vaddr, nr, flags in layout:
            if flags & criusec.PE_PRESENT:
                for k in range(nr):
                    v = vaddr + k * 4096
                    self.plain[v] = page_of(b"%x" % v)
                    ct, tag = spec_page(prk, b"pages-1.img", v, i, self.plain[v]) if tags else (self.plain[v], b"")
                    pages.append(ct)
                    ptags.append(tag)
                    i += 1
        (d / "pages-1.img").write_bytes(b"".join(pages))
        if tags:
            self.stream("pagetags", "pagetags-1.img", b"".join(ptags))
        self.stream("pagemap-%lu.img", "pagemap-42.img", image("PAGEMAP", [{"pages_id": 1}] + [
            {"vaddr": v, "compat_nr_pages": 0, "nr_pages": n, "flags": f} for v, n, f in layout]))
        self.stream("pstree.img", "pstree.img", image("PSTREE", [{"pid": 42, "ppid": 0, "pgid": 42, "sid": 42}]))
        self.stream("core-%u.img", "core-42.img", image("CORE", [{"mtype": "X86_64", "tc": {
            "task_state": 1, "exit_code": 0, "personality": 0, "flags": 0, "blk_sigset": 0, "comm": "synth"}}]))
        self.mf = manifest_bytes([(k, n, s if version >= 2 else None, hashlib.sha256(pt).digest())
                                  for k, n, s, pt in self.manifest])
        self.stream("cipher-manifest.img", "cipher-manifest.img", self.mf, listed=False)
        if version >= 2:
            if isinstance(parent, Synth):
                parent = (parent.ckpt_id, criusec.parent_binding(criusec.prk_of(parent.mk, parent.ckpt_id),
                                                                 parent.ckpt_id, self.ckpt_id))
            self.header = criusec.new_header(self.mk, self.ckpt_id, self.pubs, aead, 65536, created, parent,
                                             hashlib.sha256(self.mf).digest())
            self.seal(signer)

    def seal(self, signer=None, **fields):
        """(Re)write cipher.img: the header with fields changed, signed by
        signer, MAC'd with the checkpoint's key (what a recipient can do)."""
        self.header.update(fields)
        criusec.seal_header(self.header, self.mk, signer)
        self.write_header()

    def write_header(self, **fields):
        """cipher.img as it is, with fields changed and nothing recomputed."""
        self.header.update(fields)
        (self.dir / "cipher.img").write_bytes(criusec.encode_cipher_img(self.header))

    def stream(self, kind, name, pt, listed=True):
        sealed = criusec.stream_seal(self.mk, self.ckpt_id, self.aead, 65536, kind, name, pt)
        (self.dir / name).write_bytes(sealed)
        if listed:
            self.manifest.append((kind, name, len(sealed), pt))


# ---- attacks ----

def encrypted_dump(workloads, criu, tmp_path, keys, name="img", recipients=("alice",)):
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    args = ["--encrypt"]
    for r in recipients:
        args += ["--tls-cert", keys[r][0]]
    criu.dump(wl, tmp_path / name, *args)
    return wl, canary, tmp_path / name


def enc_args(keys, who="alice"):
    return ["--encrypt", "--tls-cert", keys[who][0]]


def genuine(memcanary, criu, tmp_path, keys, tag="g", name="img"):
    """An encrypted checkpoint of the memcanary workload (heap, stack, shared memory, memfd, SysV shm)."""
    wl, canary = memcanary(tag)
    img = tmp_path / name
    criu.dump(wl, img, *enc_args(keys))
    return wl, canary, img


def restored(criu, wl, img, keys, *args):
    criu.restore(img, "--tls-key", keys["alice"][1], *args)
    assert wl.report() == "memcanary OK 0"


def edit_manifest(img, key, edit):
    """As a key holder can: the manifest rewritten by edit([(name, kind, size, digest)]), sealed
    again, and the header that records its digest made anew (unsigned)."""
    ck = criusec.Checkpoint(img, keys=key)
    ck.unlock()
    h = ck.header
    entries = edit(criusec.decode_manifest(ck.read(criusec.MANIFEST_IMG)))
    mpt = criusec.encode_manifest(entries)
    (img / criusec.MANIFEST_IMG).write_bytes(criusec.stream_seal(ck.mk, h["ckpt_id"], h["aead"], h["chunk_size"],
                                                                 criusec.MANIFEST_KIND, criusec.MANIFEST_IMG, mpt))
    nh = criusec.new_header(ck.mk, h["ckpt_id"], h["recipients"], h["aead"], h["chunk_size"],
                            manifest_digest=hashlib.sha256(mpt).digest())
    criusec.seal_header(nh, ck.mk)
    (img / criusec.CIPHER_IMG).write_bytes(criusec.encode_cipher_img(nh))


def sign_args(cert, key):
    return ["--sign-key", key, "--sign-cert", cert]


def signed_dump(workloads, criu, img, recipient_cert, signer=None, extra=()):
    """A workload holding a canary, dumped encrypted for recipient_cert, signed by signer (cert, key)."""
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    assert wl.report() == "secrets OK"
    args = ["--encrypt", "--tls-cert", recipient_cert, *extra]
    if signer:
        args += sign_args(*signer)
    criu.dump(wl, img, *args)
    assert files_with(img, canary.encode()) == []
    return wl


def swap_in(genuine, forged):
    """Put forged's files in place of the genuine checkpoint's (as an attacker with write access would)."""
    for p in genuine.iterdir():
        if p.is_file():
            p.unlink()
    for p in forged.iterdir():
        if p.is_file() and not p.name.endswith(".log"):
            shutil.copy2(p, genuine / p.name)


def flip_in(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x10]))


CHAIN_MIB = 16


def chain_dump(criu, wl, img, keys, *extra, leave_running=False):
    alice = keys["alice"]
    args = ["--encrypt", "--tls-cert", alice[0], *sign_args(*alice), *extra]
    if leave_running:
        criu.run("dump", img, "-t", wl.pid, "--leave-running", *args)
    else:
        criu.dump(wl, img, *args)


def big_entries(ck, pagemap):
    """The biggest present pagemap entries (the workload's memory; CRIU cuts it into pieces)."""
    _, entries = ck.pagemap(pagemap)
    present = [e for e in entries if e[2] & criusec.PE_PRESENT and not e[2] & criusec.PE_PARENT]
    most = max(e[1] for e in present)
    return {e for e in present if e[1] == most}


def to_parent(ck, pagemap, moved):
    """Rewrite pagemap with the entries moved marked "in parent" (their pages leave the child)."""
    pages = dict(ck.pages(pagemap))
    _, entries = ck.pagemap(pagemap)
    ck.write_pages(pagemap, [(v, n, criusec.PE_PARENT if (v, n, f) in moved else f) for v, n, f in entries], pages)


def make_increment(child, parent, pid, key, signer=None, parent_ck=None, bind=True):
    """Turn the full dump `child` into an increment over `parent`: the biggest
    region of its memory is taken from the parent (where it must be the same).
    bind=False: only the pagemap edit and the link (a plaintext child)."""
    pm = f"pagemap-{pid}.img"
    ck = criusec.Checkpoint(child, keys=key)
    par = parent_ck or criusec.Checkpoint(parent, keys=key)
    moved = big_entries(ck, pm)
    if bind:
        for v, n, _ in moved:
            end = v + n * criusec.PAGE_SIZE
            assert dict(par.pages(pm, v, end)) == dict(ck.pages(pm, v, end)), "the memory changed between the dumps"
    to_parent(ck, pm, moved)
    if ck.encrypted:
        ck.reseal(signer=signer, parent=par if bind else None)
    link = pathlib.Path(child) / "parent"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(parent, child))
    return sum(n for _, n, _ in moved)


def refused_everywhere(criu, img, pid, keys, expect, crit_expect):
    """criu restore (expect in its log), crit (crit_expect in its one-line
    error) and pycriu all refuse the chain ending in img."""
    alice = keys["alice"]
    dirs = [img, img / "parent"]
    before = {d: dir_digest(d) for d in dirs}
    r = criu.restore(img, "--tls-key", alice[1], check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, f"the chain was restored:\n{log[-3000:]}"
    assert expect in log, f"no {expect!r} in:\n{log[-3000:]}"
    # Only the child's images were read: the parent was refused on its header.
    assert log.count("images of the checkpoint authenticated") <= 1, log[-3000:]
    wait_gone([pid], timeout=10)
    c = crit("x", img, "mems", "--pid", pid, "--pages", "0-ffffffffffff", "--tls-key", alice[1], check=False)
    assert c.returncode != 0 and "Traceback" not in c.stderr, c.stderr
    assert crit_expect in c.stderr, c.stderr
    ck = criusec.Checkpoint(img, keys=alice[1])
    with pytest.raises(criusec.CriusecError, match=crit_expect):
        dict(ck.pages(f"pagemap-{pid}.img"))
    for d in dirs:
        after = dir_digest(d)
        after.pop("restore.log", None)
        before[d].pop("restore.log", None)
        assert after == before[d], f"{d} changed"
    return log


def attackers_dump(workloads, criu, tmp_path, keys, name):
    """The attacker's own process, dumped for alice (public certificate) and
    for the attacker, who can then edit it with pycriu: a checkpoint alice's
    key opens, made without it."""
    wl = workloads("memory", CHAIN_MIB)
    img = tmp_path / name
    criu.dump(wl, img, "--encrypt", "--tls-cert", keys["alice"][0], "--tls-cert", keys["mallory"][0])
    return wl, img


def load_cert(path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())


def clone_as(src, dst_dir, recipients, key, ckpt_id):
    """Every image of the checkpoint src re-encrypted in a new checkpoint with the given id."""
    dst = criusec.Checkpoint.create(dst_dir, recipients, keys=key, ckpt_id=ckpt_id)
    pagemaps = []
    for kind, name in src.manifest():
        if name.startswith("pagemap-"):
            pagemaps.append((kind, name))
        elif kind != criusec.PAGE_TAGS_KIND:
            dst.write_image(name, src.read(name), kind)
    for kind, name in pagemaps:
        dst.write_pages(name, src.pagemap(name)[1], dict(src.pages(name)), kind=kind,
                        magic_name=src.load(name)["magic"])
    dst.reseal()
    return dst


def flip_a_page(img):
    name = biggest_pages(img)
    data = bytearray((img / name).read_bytes())
    data[len(data) // 2 + 5] ^= 0x04
    (img / name).write_bytes(bytes(data))
    return name


def crit_decode(img, key=None):
    src = REPO / "build" / "src"
    env = dict(os.environ, PYTHONPATH=f"{src / 'lib'}:{src / 'crit'}")
    r = subprocess.run(["/usr/bin/python3", "-m", "crit", "decode", "-i", str(img),
                        *(["--tls-key", key] if key else [])],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"crit decode {img}: {r.stderr}"
    return json.loads(r.stdout)["entries"]


def churn_generation(wl):
    """Check every byte of the churn workload's memory; its current generation."""
    r = wl.report()
    m = re.fullmatch(r"churn OK (\d+)", r)
    assert m, r
    return int(m.group(1))


def wait_rewritten(wl):
    """Until the churn workload's churned eighth has been rewritten whole
    since the last dump: two generations on, as the dump may have caught
    the cursor anywhere in a sweep (one generation on, only the pages after
    it were rewritten)."""
    start = churn_generation(wl)
    deadline = time.monotonic() + 120
    while churn_generation(wl) <= start + 1:
        assert time.monotonic() < deadline, "the workload stopped rewriting its memory"
        time.sleep(0.2)
