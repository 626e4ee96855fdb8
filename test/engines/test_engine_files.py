"""What the engines write in clear beside criu's encrypted images (issue 12,
item 4; Documentation/criusec.md, "What the engines write in clear").

The container gets five more secrets: ARG in an environment variable given to
the engine (-e), ROOTFS in a file of its root filesystem, SHM in /dev/shm,
TMPFS in a file on a tmpfs mount of its own, LOG written to its standard
output.  After an encrypted checkpoint, none is in criu's images, and each is
exactly in the engine files the documentation names: in the checkpoint
itself (IN_CHECKPOINT), or on the host's disk outside it (ON_HOST, what the
engine keeps anyway, checkpoint or not).  The TMPFS secret is nowhere in
clear, since criu dumps a tmpfs into its (encrypted) images, and comes back
with the restore: the place for secrets.
"""
from engines import scan, sha256_line
from test_engines import canaries, carried_on, start

IN_CHECKPOINT = {
    "podman-export": {"ARG": {"config.dump", "spec.dump"}, "ROOTFS": {"rootfs-diff.tar"},
                      "SHM": {"devshm-checkpoint.tar"}, "TMPFS": set(), "LOG": {"ctr.log"}},
    "docker": {"ARG": set(), "ROOTFS": set(), "SHM": set(), "TMPFS": set(), "LOG": set()},
    "containerd": {"ARG": {"spec"}, "ROOTFS": {"rw layer"}, "SHM": set(), "TMPFS": set(),
                   "LOG": set()},
}
IN_CHECKPOINT["podman-image"] = IN_CHECKPOINT["podman-export"]
# Engine storage outside the checkpoint.  Podman's image mode stores the
# checkpoint itself as an image layer, so its IN_CHECKPOINT files are there.
ON_HOST = {
    "podman-export": {"ARG": {"bolt_state.db"}, "ROOTFS": set(), "SHM": set(), "TMPFS": set(),
                      "LOG": set()},
    "docker": {"ARG": {"config.v2.json"}, "ROOTFS": {"rw layer"}, "SHM": set(), "TMPFS": set(),
               "LOG": {"json log"}},
    "containerd": {"ARG": {"spec"}, "ROOTFS": {"rw layer"}, "SHM": set(), "TMPFS": set(),
                   "LOG": set()},
}
ON_HOST["podman-image"] = {k: v | IN_CHECKPOINT["podman-image"][k]
                           for k, v in ON_HOST["podman-export"].items()}
# Where a secret may be left or not: containerd's metadata database held the
# container record until the checkpoint removed the container; bolt frees its
# pages but leaves their bytes until it reuses them, sometimes only part of
# them (a CI run found the variable there without the rest of the spec).
MAYBE_ON_HOST = {"containerd": {"ARG": {"meta.db"}}}
FILES = {"ROOTFS": "/root/secret", "SHM": "/dev/shm/secret", "TMPFS": "/secrets/secret",
         "LOG": "/proc/1/fd/1"}


def test_engine_files_in_clear(engine, criu_host):
    criu_host.config("encrypt")
    cans = canaries("MEM", "ENV", "PIPE")
    sec = canaries("ARG", "ROOTFS", "SHM", "TMPFS", "LOG")
    before = start(engine, "files", cans, env=[f"SECRET_ARG={sec['ARG']}"], tmpfs="/secrets")
    for kind, path in FILES.items():
        engine.exec("files", f"cat > {path}", input=sec[kind] + "\n")
    ck = engine.checkpoint("files", "files")
    assert (ck.criu_dir / "cipher.img").exists()

    criu = scan(ck.criu_files(), [*cans.values(), *sec.values()])
    assert all(not h for h in criu.values()), f"in criu's images: {criu}"
    mine = scan(ck.engine_files, sec.values())
    host = scan(engine.storage, sec.values())
    for kind, c in sec.items():
        assert {engine.label(p) for p in mine[c]} == IN_CHECKPOINT[engine.name][kind], \
            f"{kind} in the checkpoint's engine files: {mine[c]}"
        maybe = MAYBE_ON_HOST.get(engine.name, {}).get(kind, set())
        assert {engine.label(p) for p in host[c]} - maybe == ON_HOST[engine.name][kind], \
            f"{kind} in the engine's storage: {host[c]}"

    r = engine.restore("files", ck)
    assert r.returncode == 0, r.stderr
    carried_on(engine, "files", before, cans)
    tmpfs = engine.exec("files", f"sha256sum {FILES['TMPFS']}").split()[0]
    assert tmpfs == sha256_line(sec["TMPFS"]), "the tmpfs secret did not come back"
    engine.remove("files")
