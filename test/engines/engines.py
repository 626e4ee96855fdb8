"""One driver per way of checkpointing a container, behind one interface.

Each driver runs the same busybox workload (WORKLOAD), checkpoints it,
restores it and says where criu's images and the engine's own files are, so
that every test in test_engines.py runs against every engine:

    podman-export   podman container checkpoint --export / restore --import
    podman-image    podman container checkpoint --create-image / restore IMAGE
    docker          docker checkpoint create / docker start --checkpoint
    containerd      ctr c checkpoint --task --rw / ctr c restore --live --rw
"""
import gzip
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import tarfile
import time

TIMEOUT = 240
IMAGE = "localhost/criusec-bb:latest"

# PID 1 of the container (busybox sh).  It reads three canaries from a FIFO
# (so that none is on a command line or in the environment the engine
# records): M stays in its memory, E goes into the environment of a child
# process, P sits unread in a pipe between two children.  Then it counts.
# SIGUSR1 makes it write the hash of M, so the test can check that a restored
# container still holds it without writing M to any file.
WORKLOAD = r"""
trap 'printf "%s\n" "$M" | sha256sum > /tmp/mem.sum' USR1
mkfifo /tmp/in
{ read -r M; read -r E; read -r P; } < /tmp/in
rm -f /tmp/in
(export CENV="$E"; exec sleep 1000000) &
(printf "%s\n" "$P"; exec sleep 1000000) | sleep 1000000 &
E=; P=
i=0
while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done
"""
FEED = "while [ ! -p /tmp/in ]; do sleep 0.1; done; cat > /tmp/in"
MEM_SUM = ("rm -f /tmp/mem.sum; kill -USR1 1; "
           "while [ ! -s /tmp/mem.sum ]; do sleep 0.1; done; cat /tmp/mem.sum")
ENV_SUM = ("for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; done"
           " | grep '^CENV=' | sort -u | sha256sum")


def sha256_line(s):
    return hashlib.sha256((s + "\n").encode()).hexdigest()


def run(cmd, input=None, check=True, timeout=TIMEOUT):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def timed(cmd, check=True):
    t = time.monotonic()
    r = run(cmd, check=check)
    r.seconds = time.monotonic() - t
    return r


def tree_digest(*paths):
    """sha256 of every file under the paths: 'left as it was' means equal."""
    h = {}
    for top in map(pathlib.Path, paths):
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in files:
            h[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def _contents(data, depth=0):
    """The bytes of a file and of what it holds: gzip streams are inflated
    and tar members read, so a canary inside an archive is found too."""
    yield data
    if depth > 3:
        return
    if data[:2] == b"\x1f\x8b":
        try:
            yield from _contents(gzip.decompress(data), depth + 1)
        except (OSError, EOFError):
            pass
    elif len(data) > 512 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t:
                    if m.isfile():
                        yield from _contents(t.extractfile(m).read(), depth + 1)
        except tarfile.TarError:
            pass


def scan(paths, needles):
    """{needle: [files holding it]} over every regular file under paths."""
    hits = {n: [] for n in needles}
    for top in map(pathlib.Path, paths):
        if not top.exists():
            continue
        files = [top] if top.is_file() else (p for p in top.rglob("*") if p.is_file() and not p.is_symlink())
        for p in files:
            try:
                blobs = list(_contents(p.read_bytes()))
            except OSError:
                continue
            for n in needles:
                if any(n.encode() in b for b in blobs):
                    hits[n].append(str(p))
    return hits


class Checkpoint:
    """What a checkpoint left: criu_dir holds (a copy of) criu's images,
    engine_files the engine's own files of this checkpoint, ref what the
    engine restores from, keep the files that are the checkpoint."""

    def __init__(self, seconds, criu_dir, engine_files, keep, ref):
        self.seconds, self.criu_dir, self.engine_files = seconds, pathlib.Path(criu_dir), engine_files
        self.keep, self.ref = keep, ref

    def criu_files(self):
        return [p for p in self.criu_dir.rglob("*") if p.is_file()]


class Engine:
    """A driver implements: cmd (the engine's command line), exec_cmd, start,
    running, remove, ref (what a checkpoint tag is called), checkpoint
    (returns a Checkpoint, or the failed command), restore, artifact_exists,
    fingerprint and untouched (for refused restores), label (what kind of
    engine file a path is, as Documentation/criusec.md names them)."""
    name = ""
    storage = ()          # every directory the engine keeps state in

    def __init__(self, work):
        self.work = pathlib.Path(work)

    # --- common to all engines, built on cmd/exec_cmd ---
    def exec(self, name, script, input=None):
        return run(self.exec_cmd(name, script, input is not None), input=input).stdout

    def feed(self, name, canaries):
        self.exec(name, FEED, input="".join(c + "\n" for c in canaries))

    def count(self, name):
        return int(self.exec(name, "cat /tmp/count").strip() or 0)

    def wait_count(self, name, at_least, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                n = self.count(name)
            except AssertionError:
                n = -1
            if n >= at_least:
                return n
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: {name} did not count to {at_least} in {timeout}s")

    def mem_sum(self, name):
        return self.exec(name, MEM_SUM).split()[0]

    def env_sum(self, name):
        return self.exec(name, ENV_SUM).split()[0]


class DockerLike(Engine):
    """Podman and Docker: the same command line for running containers."""

    def exec_cmd(self, name, script, stdin):
        return self.cmd("exec", *(["-i"] if stdin else []), name, "sh", "-c", script)

    def start(self, name, env=(), tmpfs=None):
        args = ["run", "-d", "--name", name, "--network", "none"]
        for e in env:
            args += ["-e", e]
        if tmpfs:
            args += self.tmpfs_args(tmpfs)
        run(self.cmd(*args, IMAGE, "sh", "-c", WORKLOAD))

    def running(self, name):
        r = run(self.cmd("inspect", "-f", "{{.State.Running}}", name), check=False)
        return r.returncode == 0 and r.stdout.strip() == "true"


class Podman(DockerLike):
    storage = ("/var/lib/containers", "/run/containers", "/run/libpod")

    def __init__(self, work, mode):
        super().__init__(work)
        self.mode = mode
        self.name = f"podman-{mode}"

    def cmd(self, *args):
        return ["podman", *args]

    def tmpfs_args(self, path):
        return ["--mount", f"type=tmpfs,destination={path}"]

    def exists(self, name):
        return run(self.cmd("container", "exists", name), check=False).returncode == 0

    def remove(self, name):
        run(self.cmd("rm", "-f", "-t", "0", name), check=False)

    def ref(self, tag):
        if self.mode == "export":
            return str(self.work / f"{tag}.tar.gz")
        return f"localhost/criusec-ck-{tag}:latest"

    def checkpoint(self, name, tag, check=True):
        if self.mode == "export":
            out = pathlib.Path(self.ref(tag))
            r = timed(self.cmd("container", "checkpoint", "--export", str(out), name), check=check)
            if r.returncode != 0:
                return r
            self.remove(name)
            x = self.work / f"{tag}.x"
            x.mkdir()
            # Podman compresses with zstd by default: GNU tar (with zstd) reads it.
            run(["tar", "-xf", str(out), "-C", str(x)])
            engine = [p for p in x.iterdir() if p.name != "checkpoint"]
            return Checkpoint(r.seconds, x / "checkpoint", engine, [out], ref=str(out))
        ref = self.ref(tag)
        r = timed(self.cmd("container", "checkpoint", "--create-image", ref, name), check=check)
        if r.returncode != 0:
            return r
        self.remove(name)
        mnt = pathlib.Path(run(self.cmd("image", "mount", ref)).stdout.strip())
        x = self.work / f"{tag}.x"
        shutil.copytree(mnt, x, symlinks=True)
        run(self.cmd("image", "unmount", ref))
        engine = [p for p in x.iterdir() if p.name != "checkpoint"]
        return Checkpoint(r.seconds, x / "checkpoint", engine, [], ref=ref)

    def artifact_exists(self, name, ref):
        if self.mode == "export":
            return os.path.exists(ref) and os.path.getsize(ref) > 0
        return run(self.cmd("image", "exists", ref), check=False).returncode == 0

    def restore(self, name, ck):
        if self.mode == "export":
            return timed(self.cmd("container", "restore", "--import", ck.ref), check=False)
        return timed(self.cmd("container", "restore", ck.ref), check=False)

    def fingerprint(self, name, ck):
        if self.mode == "export":
            return tree_digest(ck.ref)
        return run(self.cmd("image", "inspect", "-f", "{{.Id}}", ck.ref)).stdout.strip()

    def untouched(self, name, ck, fingerprint):
        """After a refused restore: nothing runs, the checkpoint is intact.
        Podman leaves the container it created for the restore in state
        "created"; an operator removes it (podman rm) as done here."""
        if self.exists(name):
            st = run(self.cmd("inspect", "-f", "{{.State.Status}}", name)).stdout.strip()
            assert st == "created", f"{self.name}: {name} is {st} after a refused restore"
            self.remove(name)
        assert self.fingerprint(name, ck) == fingerprint

    def label(self, path):
        return "bolt_state.db" if path.endswith("bolt_state.db") else os.path.basename(path)


class Docker(DockerLike):
    name = "docker"
    storage = ("/var/lib/docker", "/run/docker")
    sock = "unix:///run/docker.sock"

    def cmd(self, *args):
        # Debian's client: the first docker on PATH may be another one.
        return ["/usr/bin/docker", "-H", self.sock, *args]

    def tmpfs_args(self, path):
        return ["--tmpfs", path]

    def inspect(self, name, fmt):
        return run(self.cmd("inspect", "-f", fmt, name)).stdout.strip()

    def remove(self, name):
        run(self.cmd("rm", "-f", name), check=False)

    def container_dir(self, name):
        return pathlib.Path("/var/lib/docker/containers") / self.inspect(name, "{{.Id}}")

    def ref(self, tag):
        return tag

    def checkpoint(self, name, tag, check=True):
        r = timed(self.cmd("checkpoint", "create", name, tag), check=check)
        if r.returncode != 0:
            return r
        d = self.container_dir(name) / "checkpoints" / tag
        x = self.work / f"{tag}.x"
        shutil.copytree(d, x)
        # Docker's own file in the checkpoint directory, beside criu's.
        desc = self.work / f"{tag}.descriptors.json"
        (x / "descriptors.json").rename(desc)
        return Checkpoint(r.seconds, x, [desc], [d], ref=tag)

    def artifact_exists(self, name, ref):
        return ref in run(self.cmd("checkpoint", "ls", name)).stdout.split()

    def restore(self, name, ck):
        return timed(self.cmd("start", "--checkpoint", ck.ref, name), check=False)

    def fingerprint(self, name, ck):
        return tree_digest(*ck.keep)

    def untouched(self, name, ck, fingerprint):
        """After a refused restore: the container stopped, its checkpoint intact."""
        state = self.inspect(name, "{{.State.Status}}")
        assert state in ("exited", "created"), f"docker: {name} is {state} after a refused restore"
        assert self.artifact_exists(name, ck.ref)
        assert self.fingerprint(name, ck) == fingerprint


    def label(self, path):
        if "/overlay2/" in path and "/diff/" in path:
            return "rw layer"
        if path.endswith("-json.log"):
            return "json log"
        return os.path.basename(path)


class Containerd(Engine):
    name = "containerd"
    storage = ("/var/lib/containerd", "/run/containerd")
    sock = "/run/containerd/containerd.sock"
    content = pathlib.Path("/var/lib/containerd/io.containerd.content.v1.content/blobs")

    def __init__(self, work):
        super().__init__(work)
        self.execs = 0

    def cmd(self, *args):
        return ["ctr", "--address", self.sock, *args]

    def exec_cmd(self, name, script, stdin):
        self.execs += 1
        return self.cmd("task", "exec", "--exec-id", f"x{self.execs}", name, "sh", "-c", script)

    def start(self, name, env=(), tmpfs=None):
        args = ["run", "-d"]
        for e in env:
            args += ["--env", e]
        if tmpfs:
            args += ["--mount", f"type=tmpfs,src=tmpfs,dst={tmpfs},options=rw:nosuid:nodev"]
        run(self.cmd(*args, IMAGE, name, "sh", "-c", WORKLOAD))

    def task_status(self, name):
        for line in run(self.cmd("task", "ls")).stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == name:
                return f[-1]
        return None

    def running(self, name):
        return self.task_status(name) == "RUNNING"

    def remove(self, name):
        if self.task_status(name) is not None:
            run(self.cmd("task", "kill", "-s", "SIGKILL", name), check=False)
            for _ in range(50):
                if self.task_status(name) in (None, "STOPPED", "CREATED"):
                    break
                time.sleep(0.1)
            # Not "task rm -f": it can hang on a task a failed restore left CREATED.
            run(self.cmd("task", "rm", name), check=False)
        run(self.cmd("container", "rm", name), check=False)

    def blobs(self):
        return {p.name for p in self.content.rglob("*") if p.is_file()}

    def ref(self, tag):
        return tag

    def checkpoint(self, name, tag, check=True):
        before = self.blobs()
        r = timed(self.cmd("container", "checkpoint", "--task", "--rw", name, tag), check=check)
        if r.returncode != 0:
            return r
        self.remove(name)
        x = self.work / f"{tag}.x"
        x.mkdir()
        engine = []
        # The checkpoint is an image of new blobs: criu's images (a tar
        # holding inventory.img), the spec, the rw layer, runtime options.
        for digest in sorted(self.blobs() - before):
            p = next(self.content.rglob(digest))
            data = p.read_bytes()
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as t:
                    if "inventory.img" in [os.path.basename(n) for n in t.getnames()]:
                        t.extractall(x)
                        continue
            except tarfile.TarError:
                pass
            engine.append(p)
        return Checkpoint(r.seconds, x, engine, [], ref=tag)

    def image_digest(self, ref):
        for line in run(self.cmd("image", "ls")).stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == ref:
                return f[2]
        return None

    def restore(self, name, ck):
        return timed(self.cmd("container", "restore", "--live", "--rw", name, ck.ref), check=False)

    def artifact_exists(self, name, ref):
        return self.image_digest(ref) is not None

    def fingerprint(self, name, ck):
        return self.image_digest(ck.ref)

    def untouched(self, name, ck, fingerprint):
        """After a refused restore: no task runs, the checkpoint image intact.
        ctr leaves the container it created for the restore (and a task in
        CREATED): an operator removes them as done here."""
        assert not self.running(name), f"containerd: {name} runs after a refused restore"
        self.remove(name)
        assert self.fingerprint(name, ck) == fingerprint

    def label(self, path):
        """What a blob of the checkpoint image is, from its content; the
        metadata database by its name."""
        if path.endswith("/io.containerd.metadata.v1.bolt/meta.db"):
            return "meta.db"
        with open(path, "rb") as f:
            data = f.read()
        if b'"ociVersion"' in data:     # the container record, with its OCI spec
            return "spec"
        if data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
            return "rw layer"
        return "other"
