"""The container image, built offline from Debian's busybox-static, and the
engines' configuration for these tests.

build() writes a root filesystem tar (/bin/busybox and a link per applet),
which 'podman import' and 'docker import' take as it is, and the same layer
as an OCI image archive for 'ctr image import' (which needs index.json).
"""
import hashlib
import io
import json
import subprocess
import tarfile

BUSYBOX = "/bin/busybox"

# cgroupfs: there is no systemd here.  nofile: root lacks CAP_SYS_RESOURCE on
# these machines (hard limit 20000), so the runtime must not ask for more.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""

CONTAINERD_TOML = """\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
"""


def _add(t, name, data=None, **kw):
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)


def rootfs_tar(extra=None):
    """extra: {path in the image: (bytes, mode)}, added after busybox."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for d in ("bin", "dev", "etc", "proc", "root", "sys", "tmp"):
            _add(t, d, type=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            _add(t, "bin/busybox", f.read(), mode=0o755)
        for a in applets:
            if a != "busybox":
                _add(t, f"bin/{a}", type=tarfile.SYMTYPE, linkname="busybox")
        for name, (data, mode) in (extra or {}).items():
            _add(t, name, data, mode=mode)
    return buf.getvalue()


def _digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def oci_archive(layer):
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": "localhost/criusec-bb:latest",
                        "org.opencontainers.image.ref.name": "latest"}}]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(t, "index.json", index)
        for b in (layer, config, manifest):
            _add(t, "blobs/sha256/" + _digest(b)[7:], b)
    return buf.getvalue()


def build(d):
    layer = rootfs_tar()
    (d / "rootfs.tar").write_bytes(layer)
    (d / "oci.tar").write_bytes(oci_archive(layer))
    return {"tar": d / "rootfs.tar", "oci": d / "oci.tar"}
