"""Nodes, a registry and image signing for test_registry.py (issue 22).

A Node is a Kubernetes node in miniature: a mount namespace of its own
(inside the session's, isolation.py) where /etc/criu, /etc/pki/criu,
/etc/containers and Podman's storage are the node's own directories, bound
from STATE/nodes/NAME.  A holder process keeps the namespace; every command
of the node runs in it through nsenter, so Podman, conmon, runc and criu see
that node's configuration, keys and storage only.  The nodes share the
session's network namespace (loopback only), where the registry listens.

The registry is Debian's docker-registry (distribution 2.8) on
127.0.0.1:5000, plain HTTP, marked insecure in each node's own
registries.conf; its storage is a directory the tests scan.  Signatures are
GnuPG "simple signing" (what skopeo 1.9 and Podman 4.3 verify), written by
the pushing node into a lookaside store (sigstore-staging, a directory) and
read by every node over HTTP (sigstore, a python3 http.server on
127.0.0.1:5001); each node's /etc/containers/policy.json requires a
signature by the fleet's signing keys (signedBy, a GnuPG keyring) for every
image of the registry and rejects every other registry.
"""
import hashlib
import io
import json
import os
import pathlib
import subprocess
import tarfile
import time
import gzip

import engines
import image

REGISTRY = "127.0.0.1:5000"
LOOKASIDE_PORT = 5001
NODE_DIRS = ("etc/criu", "etc/pki/criu", "etc/containers", "var/lib/containers", "var/lib/cni",
             "run/containers", "run/libpod", "run/runc", "var/tmp")
REGISTRY_YML = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
"""


def run(cmd, **kw):
    return engines.run([str(c) for c in cmd], **kw)


class Signer:
    """A GnuPG key that signs images (simple signing), in a GNUPGHOME of its own."""

    def __init__(self, home, uid):
        self.home = pathlib.Path(home)
        self.home.mkdir(mode=0o700)
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                        "--quick-gen-key", uid, "rsa3072", "sign", "never"],
                       env=self.env, check=True, capture_output=True, timeout=300)
        out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=self.env,
                             check=True, capture_output=True, text=True).stdout
        self.fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))

    def public(self):
        return subprocess.run(["gpg", "--batch", "--export", self.fpr], env=self.env, check=True,
                              capture_output=True).stdout

    def stop(self):
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True)


class Node:
    """One node: its criu identity from the fleet CA (criusec-keygen node),
    its /etc/criu, /etc/containers and container storage."""

    def __init__(self, name, root, ca, keygen, sigstore_staging):
        self.name, self.root = name, pathlib.Path(root)
        for d in NODE_DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # Its key and certificate in CRIU's default places, the CA as
        # /etc/criu/trusted-signers.pem: exactly what a node gets.
        subprocess.run([keygen, "node", "--ca", str(ca), f"node-{name}"], check=True,
                       capture_output=True, env={**os.environ, "CRIUSEC_KEYGEN_ROOT": str(self.root)})
        self.etc_criu = self.root / "etc/criu"
        self.cert = self.root / "etc/pki/criu/cert.pem"
        self.key = self.root / "etc/pki/criu/private/key.pem"
        self.trust = self.etc_criu / "trusted-signers.pem"
        self.pubkey = self.root / "pub.pem"
        self.pubkey.write_text(run(["openssl", "x509", "-in", self.cert, "-pubkey", "-noout"]).stdout)
        cont = self.root / "etc/containers"
        (cont / "containers.conf").write_text(image.CONTAINERS_CONF)
        (cont / "registries.conf").write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
        (cont / "registries.d").mkdir(exist_ok=True)
        (cont / "registries.d" / "fleet.yaml").write_text(
            f"docker:\n  {REGISTRY}:\n    sigstore: http://127.0.0.1:{LOOKASIDE_PORT}\n"
            f"    sigstore-staging: file://{sigstore_staging}\n")
        self.accept_anything()
        script = "set -e; " + "; ".join(f"mkdir -p /{d}; mount --bind {self.root}/{d} /{d}"
                                        for d in NODE_DIRS) + "; echo ready; exec sleep 1000000"
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                        "sh", "-c", script], stdout=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        assert line == "ready", f"node {name}: its namespace was not made ({line!r})"
        self.podman = NodePodman(self, self.root / "work")
        (self.root / "work").mkdir()

    # --- the node's namespace ---
    def wrap(self, cmd):
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *map(str, cmd)]

    def run(self, *cmd, check=True, input=None, timeout=engines.TIMEOUT, env=None):
        r = subprocess.run(self.wrap(cmd), input=input, capture_output=True, text=True,
                           timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"node {self.name}: {' '.join(map(str, cmd))} failed "
                                 f"({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def timed(self, *cmd, check=True, env=None):
        t = time.monotonic()
        r = self.run(*cmd, check=check, env=env)
        r.seconds = time.monotonic() - t
        return r

    def stop(self):
        self.run("podman", "rm", "-a", "-f", "-t", "0", check=False)
        self.holder.kill()
        self.holder.wait()

    # --- criu's configuration ---
    def config(self, *lines):
        (self.etc_criu / "default.conf").write_text("".join(line + "\n" for line in lines))

    def require_encryption(self, on=True):
        m = self.etc_criu / "encryption-required"
        m.touch() if on else m.unlink(missing_ok=True)

    def recipients(self, *nodes):
        """Encrypt what this node dumps for these nodes (their certificates)."""
        d = self.etc_criu / "recipients"
        d.mkdir(exist_ok=True)
        lines = ["encrypt"]
        for n in nodes:
            (d / f"node-{n.name}.pem").write_bytes(n.cert.read_bytes())
            lines.append(f"tls-cert /etc/criu/recipients/node-{n.name}.pem")
        return lines

    # --- containers' signature policy ---
    def accept_anything(self):
        (self.root / "etc/containers/policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))

    def require_signatures(self, *signers):
        """Only images of the registry signed by one of these keys; no other
        registry at all.  Local transports (the node's own storage, archives)
        stay open: they hold what the node itself made."""
        ring = self.root / "etc/containers/fleet-signers.gpg"
        ring.write_bytes(b"".join(s.public() for s in signers))
        policy = {
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {
                REGISTRY: [{"type": "signedBy", "keyType": "GPGKeys",
                            "keyPath": "/etc/containers/fleet-signers.gpg"}],
                "": [{"type": "reject"}]}}}
        (self.root / "etc/containers/policy.json").write_text(json.dumps(policy, indent=1))

    # --- images ---
    def push(self, local, remote, signer=None, encrypt_for=(), pkcs7_for=(), timeout=engines.TIMEOUT):
        """skopeo copy from the node's storage to the registry: layers
        encrypted for encrypt_for (JWE, each node's criusec public key) or
        pkcs7_for (PKCS#7, each node's certificate), signed by signer.  A
        signature the local image carries (one it was pulled with) is
        dropped: it would not cover the encrypted image."""
        cmd = ["skopeo", "copy", "--quiet", "--remove-signatures"]
        for n in encrypt_for:
            cmd += ["--encryption-key", f"jwe:{n.pubkey}"]
        for n in pkcs7_for:
            cmd += ["--encryption-key", f"pkcs7:{n.cert}"]
        if signer:
            cmd += ["--sign-by", signer.fpr]
        t = time.monotonic()
        r = self.run(*cmd, f"containers-storage:{local}", f"docker://{REGISTRY}/{remote}",
                     env=signer.env if signer else None, timeout=timeout)
        r.seconds = time.monotonic() - t
        return r

    def pull(self, remote, check=True, decrypt=True, timeout=engines.TIMEOUT):
        """skopeo copy from the registry into the node's storage, under the
        node's policy.json, decrypting with the node's criusec key."""
        cmd = ["skopeo", "copy", "--quiet"]
        if decrypt:
            cmd += ["--decryption-key", "/etc/pki/criu/private/key.pem", "--remove-signatures"]
        t = time.monotonic()
        r = self.run(*cmd, f"docker://{REGISTRY}/{remote}", f"containers-storage:{REGISTRY}/{remote}",
                     check=check, timeout=timeout)
        r.seconds = time.monotonic() - t
        return r

    def has_image(self, ref):
        return self.run("podman", "image", "exists", ref, check=False).returncode == 0


class NodePodman(engines.Podman):
    """engines.Podman (checkpoint --create-image, restore IMAGE) on a node."""

    def __init__(self, node, work):
        super().__init__(work, "image")
        self.node = node
        self.name = f"podman on node {node.name}"

    def cmd(self, *args):
        return self.node.wrap(["podman", *args])


class Registry:
    """docker-registry on REGISTRY, storage in root; and the lookaside
    signature store served over HTTP."""

    def __init__(self, state, daemon):
        self.root = state / "registry"
        self.sigstore = state / "sigstore"
        self.sigstore.mkdir()
        conf = state / "registry.yml"
        conf.write_text(REGISTRY_YML.format(root=self.root, addr=REGISTRY))
        self.daemon = daemon("docker-registry", ["docker-registry", "serve", str(conf)], self.ready)
        self.lookaside = daemon("lookaside", ["python3", "-m", "http.server", str(LOOKASIDE_PORT),
                                              "--bind", "127.0.0.1", "--directory", str(self.sigstore)],
                                lambda: self.get(f"http://127.0.0.1:{LOOKASIDE_PORT}/", ok=True))

    @staticmethod
    def get(url, ok=False):
        import urllib.request
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if ok:
                return None
            raise

    def ready(self):
        return self.get(f"http://{REGISTRY}/v2/", ok=True) is not None

    ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                        "application/vnd.docker.distribution.manifest.v2+json"}

    def manifest_digest(self, repo, tag):
        import urllib.request
        req = urllib.request.Request(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", method="HEAD",
                                     headers=self.ACCEPT)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["Docker-Content-Digest"]

    def manifest(self, repo, tag):
        import urllib.request
        req = urllib.request.Request(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", headers=self.ACCEPT)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def blob_path(self, digest):
        algo, hexd = digest.split(":")
        return self.root / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def bytes(self):
        return sum(p.stat().st_size for p in (self.root / "docker/registry/v2/blobs").rglob("data"))

    def signatures(self, repo, digest):
        """The lookaside directory of one manifest digest."""
        return self.sigstore / f"{repo}@{digest.replace(':', '=')}"

    def stop(self):
        self.lookaside.stop()
        self.daemon.stop()


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


class ImageDir:
    """An image in skopeo's dir: layout, edited the way someone who can
    write to the registry (but holds no signing key) would: every digest
    made consistent again, so that only the signature can tell."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())

    def blob(self, d):
        return (self.path / d.split(":")[1]).read_bytes()

    def put(self, data):
        d = digest(data)
        (self.path / d.split(":")[1]).write_bytes(data)
        return d

    def save(self):
        (self.path / "manifest.json").write_text(json.dumps(self.manifest))

    def annotate(self, **annotations):
        self.manifest.setdefault("annotations", {}).update(annotations)
        self.save()

    def edit_layer_file(self, name, edit):
        """Rewrite one file of the (single, gzip) layer with edit(bytes) and
        fix the layer's digest, the config's diff_id and the manifest."""
        layer = self.manifest["layers"][0]
        raw = gzip.decompress(self.blob(layer["digest"]))
        out = io.BytesIO()
        found = False
        with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
            for m in src:
                data = src.extractfile(m).read() if m.isfile() else None
                if m.name.lstrip("./") == name:
                    data, found = edit(data), True
                    m.size = len(data)
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
        assert found, f"{name} is not in the layer"
        new_raw = out.getvalue()
        new = gzip.compress(new_raw)
        layer["digest"], layer["size"] = self.put(new), len(new)
        cfg = json.loads(self.blob(self.manifest["config"]["digest"]))
        cfg["rootfs"]["diff_ids"][0] = digest(new_raw)
        c = json.dumps(cfg).encode()
        self.manifest["config"]["digest"], self.manifest["config"]["size"] = self.put(c), len(c)
        self.save()
