"""From one node to another through a registry (issue 22): checkpoint
images signed, encrypted, pushed, pulled and restored.

Three nodes (registry.Node), each with its own identity from one fleet CA
(criusec-keygen node), its own /etc/criu (encryption-required, trust in the
CA) and its own Podman storage, and Debian's docker-registry on 127.0.0.1.
Node A checkpoints for node B (its /etc/criu/default.conf: "encrypt" and B's
certificate as the recipient); node C belongs to the fleet but is no
recipient.  Node A signs what it pushes with the fleet's image-signing key
(GnuPG simple signing, lookaside store); every node's policy.json requires
that signature for the registry's images, so an image that is unsigned or
altered after signing is refused at pull, before Podman reads any of it.

The container (engines.WORKLOAD) holds canaries: M in its memory, E in a
child's environment, P in a pipe (all three only in criu's images), X in a
'-e' variable (Podman's config.dump and spec.dump) and F in a file it wrote
(rootfs-diff.tar).  After every push the registry's storage is scanned for
all five.

CRI-O, the kubelet and containerd's CRI restore are not in Debian 12: the
Kubernetes way (an archive made into an image with buildah, with CRI-O's
annotation) is restored here with Podman.
"""
import json
import re
import secrets
import shutil
import subprocess
import time

import pytest

import engines
import image
from conftest import NOTES, STATE, SYSLOG, Daemon, keygen, need
from engines import scan, sha256_line
import registry
from registry import REGISTRY

BASE = f"{REGISTRY}/criusec-bb:latest"
RECORDS_MIB = 256
# Results of test_timings, printed at the end of the run.
TABLE = []


@pytest.fixture(scope="module")
def fleet(podman_conf, rootfs):
    need("skopeo", "buildah", "docker-registry", "gpg", "nsenter", "unshare")
    top = STATE / "fleet"
    top.mkdir()
    kg = keygen()
    subprocess.run([kg, "ca", "init", str(top / "ca"), "fleet CA"], check=True, capture_output=True)
    subprocess.run([kg, "ca", "init", str(top / "other-ca"), "another fleet's CA"], check=True,
                   capture_output=True)
    reg = registry.Registry(top, Daemon)
    f = type("Fleet", (), {})()
    f.top, f.registry = top, reg
    f.other_ca = top / "other-ca" / "ca-cert.pem"
    f.signer = registry.Signer(top / "gnupg-fleet", "criusec fleet image signer <signer@fleet.invalid>")
    f.stranger = registry.Signer(top / "gnupg-stranger", "not the fleet <x@stranger.invalid>")
    f.nodes = {}
    try:
        for n in "abc":
            f.nodes[n] = registry.Node(n, top / "nodes" / n, top / "ca", kg, reg.sigstore)
        a, b, c = (f.nodes[n] for n in "abc")
        f.a, f.b, f.c = a, b, c
        for n in (a, b, c):
            n.require_encryption()
            n.require_signatures(f.signer)
        a.config(*a.recipients(b))
        # The base image: imported on A, pushed signed, pulled (verified) on B and C.
        a.run("podman", "import", rootfs["tar"], "localhost/criusec-bb:latest")
        a.push("localhost/criusec-bb:latest", "criusec-bb:latest", signer=f.signer)
        for n in (a, b, c):
            n.pull("criusec-bb:latest", decrypt=False)
        yield f
    finally:
        for n in f.nodes.values():
            n.stop()
        f.signer.stop()
        f.stranger.stop()
        reg.stop()


def canaries():
    return {k: f"criusec-{k}-{secrets.token_hex(12)}" for k in "MEPXF"}


def start(node, name, can):
    p = node.podman
    node.run("podman", "run", "-d", "--name", name, "--network", "none", "-e", f"SECRET={can['X']}",
             BASE, "sh", "-c", engines.WORKLOAD)
    p.feed(name, [can["M"], can["E"], can["P"]])
    p.exec(name, f"echo {can['F']} > /root/note")
    p.wait_count(name, 3)


def checkpoint(node, name, ref):
    r = node.timed("podman", "container", "checkpoint", "--create-image", ref, name)
    node.run("podman", "rm", "-f", "-t", "0", name)
    return r.seconds


def assert_restored(node, name, can, after=0):
    p = node.podman
    assert p.running(name), f"{name} does not run on node {node.name}"
    n = p.wait_count(name, after + 1)
    assert n > after
    assert p.mem_sum(name) == sha256_line(can["M"]), "memory canary not back"
    env = "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; done | grep '^CENV=' | sort -u"
    assert p.exec(name, env).strip() == f"CENV={can['E']}", "environment canary not back"
    assert p.exec(name, "cat /root/note").strip() == can["F"], "file canary not back"
    assert p.exec(name, "echo $SECRET").strip() == can["X"]


def scan_registry(f, can, what):
    hits = scan([f.registry.root], list(can.values()))
    found = {k: hits[v] for k, v in can.items() if hits[v]}
    NOTES.append(f"registry scan after {what}: " + (
        ", ".join(f"{k} in {len(v)} blob(s)" for k, v in sorted(found.items())) or "no canary in any blob"))
    return found


def syslog_since(since, pattern):
    lines = [m for m in SYSLOG[since:] if re.search(r"criu\[\d+\]: RESTORE failed: ", m)]
    assert lines, f"no 'RESTORE failed' line from criu in syslog: {SYSLOG[since:]}"
    assert re.search(pattern, lines[0], re.I), lines[0]
    return lines[0]


def restore_refused(node, name, ref, pattern):
    """podman container restore IMAGE refused by criu on node: the reason in
    syslog, no container running, the image unchanged."""
    before = node.run("podman", "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
    since = len(SYSLOG)
    r = node.run("podman", "container", "restore", ref, check=False)
    assert r.returncode != 0, f"node {node.name} restored {ref}: {r.stdout}"
    line = syslog_since(since, pattern)
    assert not node.podman.running(name)
    node.run("podman", "rm", "-f", "-t", "0", name, check=False)
    assert node.run("podman", "ps", "-q").stdout.strip() == "", "something runs after a refusal"
    assert node.run("podman", "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == before
    return line


def pull_refused(node, remote, pattern, decrypt=True):
    r = node.pull(remote, check=False, decrypt=decrypt)
    assert r.returncode != 0, f"node {node.name} pulled {remote}"
    assert re.search(pattern, r.stderr, re.I), r.stderr
    assert not node.has_image(f"{REGISTRY}/{remote}"), f"{remote} is in node {node.name}'s storage"
    return r.stderr.strip().splitlines()[-1]


def test_encrypted_layers_node_a_to_node_b(fleet):
    """The whole path, layers encrypted for node B (JWE, B's criusec public
    key), signed: the registry holds no canary; B pulls with its criusec
    key, restores, and every canary is back; C (no recipient) cannot pull."""
    f = fleet
    can = canaries()
    start(f.a, "ck1", can)
    n0 = f.a.podman.count("ck1")
    t_ck = checkpoint(f.a, "ck1", "localhost/ck1:latest")
    push = f.a.push("localhost/ck1:latest", "ck1:enc", signer=f.signer, encrypt_for=[f.b])
    assert scan_registry(f, can, "the layer-encrypted push") == {}
    why = pull_refused(f.c, "ck1:enc", r"no suitable key unwrapper|decrypt")
    NOTES.append(f"node C (not a recipient) pulling the layer-encrypted image: {why[:200]}")
    pull = f.b.pull("ck1:enc")
    r = f.b.timed("podman", "container", "restore", f"{REGISTRY}/ck1:enc")
    assert_restored(f.b, "ck1", can, n0)
    NOTES.append(f"A -> registry -> B, layers encrypted: checkpoint {t_ck:.2f} s, push {push.seconds:.2f} s, "
                 f"pull {pull.seconds:.2f} s, restore {r.seconds:.2f} s")
    f.b.run("podman", "rm", "-f", "-t", "0", "ck1")


def test_pkcs7_layer_recipient_not_decrypted_by_skopeo(fleet):
    """PKCS#7 recipients (--encryption-key pkcs7:CERT, node B's criusec
    certificate itself) encrypt, but skopeo 1.9's --decryption-key passes
    ocicrypt no certificate, which PKCS#7 needs: B cannot pull.  Why the
    recipe uses JWE with the certificate's public key (if this starts
    passing the pull, the documentation must change)."""
    f = fleet
    f.a.push("localhost/criusec-bb:latest", "p7:latest", signer=f.signer, pkcs7_for=[f.b])
    why = pull_refused(f.b, "p7:latest", r"no suitable key unwrapper")
    NOTES.append(f"node B pulling layers encrypted for its certificate (PKCS#7): {why[:200]}")


def test_plain_layers_engine_files_in_clear(fleet):
    """Pushed without layer encryption: criu's images keep M, E and P out of
    the registry, the engine's files (config.dump, spec.dump,
    rootfs-diff.tar) put X and F there (the scan can fail, and does).  C
    pulls (the signature is good) but criu refuses it: not a recipient."""
    f = fleet
    can = canaries()
    start(f.a, "ck2", can)
    checkpoint(f.a, "ck2", "localhost/ck2:latest")
    f.a.push("localhost/ck2:latest", "ck2:plain", signer=f.signer)
    found = scan_registry(f, can, "the push without layer encryption")
    assert not {"M", "E", "P"} & set(found), f"criu's canaries in the registry: {found}"
    assert set(found) == {"X", "F"}, f"the engine's files should hold X and F in clear: {found}"
    f.c.pull("ck2:plain", decrypt=False)
    line = restore_refused(f.c, "ck2", f"{REGISTRY}/ck2:plain", r"recipient")
    NOTES.append(f"node C restoring A's checkpoint for B: {line[:250]}")
    f.b.pull("ck2:plain", decrypt=False)
    # B, once made to trust another CA only: the signer is not trusted.
    genuine = f.b.trust.read_bytes()
    f.b.trust.write_bytes(f.other_ca.read_bytes())
    try:
        line = restore_refused(f.b, "ck2", f"{REGISTRY}/ck2:plain", r"trust|signer")
        NOTES.append(f"node B trusting another CA: {line[:250]}")
    finally:
        f.b.trust.write_bytes(genuine)
    f.b.run("podman", "container", "restore", f"{REGISTRY}/ck2:plain")
    assert_restored(f.b, "ck2", can)
    f.b.run("podman", "rm", "-f", "-t", "0", "ck2")


def attacker_copy(src, dst, tmp_path):
    """skopeo as someone who can write to the registry and its lookaside
    store but holds no signing key: no signature policy of a node."""
    pol = tmp_path / "accept.json"
    pol.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    engines.run(["skopeo", "--policy", str(pol), "copy", "--quiet", "--src-tls-verify=false",
                 "--dest-tls-verify=false", src, dst])


def test_signature_policy_refuses_altered_images(fleet, tmp_path):
    """policy.json (signedBy the fleet's key) refuses at pull, before Podman
    reads anything: an unsigned image, one signed by another key, and the
    advisories' shapes made by someone who can write to the registry and to
    the lookaside store (the genuine signature copied beside the altered
    manifest): a CDI annotation added (CVE-2026-53492), a host bind mount
    added to spec.dump, the base image reference swapped in config.dump
    (CVE-2026-50195); and a layer blob swapped in the registry's storage for
    another checkpoint's.  The genuine image then pulls and restores."""
    f = fleet
    can = canaries()
    start(f.a, "ck3", can)
    n0 = f.a.podman.count("ck3")
    checkpoint(f.a, "ck3", "localhost/ck3:latest")
    f.a.push("localhost/ck3:latest", "ck3:signed", signer=f.signer)
    found = scan_registry(f, can, "the signed push of ck3 (layers in clear)")
    assert not {"M", "E", "P"} & set(found), f"criu's canaries in the registry: {found}"
    good = f.registry.manifest_digest("ck3", "signed")
    sigs = f.registry.signatures("ck3", good)
    assert sorted(p.name for p in sigs.iterdir()) == ["signature-1"]
    genuine = tmp_path / "genuine"
    attacker_copy(f"docker://{REGISTRY}/ck3:signed", f"dir:{genuine}", tmp_path)
    refusals = []

    # Unsigned, and signed by a key the fleet does not trust.
    f.a.push("localhost/ck3:latest", "unsigned:latest")
    refusals.append(("unsigned", pull_refused(f.b, "unsigned:latest", r"signature", decrypt=False)))
    f.a.push("localhost/ck3:latest", "stranger:latest", signer=f.stranger)
    refusals.append(("signed by another key", pull_refused(f.b, "stranger:latest", r"signature|key",
                                                          decrypt=False)))

    def altered(what, change):
        d = tmp_path / what.replace(" ", "-")
        shutil.copytree(genuine, d)
        change(registry.ImageDir(d))
        attacker_copy(f"dir:{d}", f"docker://{REGISTRY}/ck3:signed", tmp_path)
        bad = f.registry.manifest_digest("ck3", "signed")
        assert bad != good
        shutil.copytree(sigs, f.registry.signatures("ck3", bad))
        refusals.append((what, pull_refused(f.b, "ck3:signed", r"signature|digest", decrypt=False)))

    altered("CDI annotation added", lambda img: img.annotate(
        **{"cdi.k8s.io/criusec-test": "criusec.invalid/host=root"}))

    def mount(data):
        spec = json.loads(data)
        spec["mounts"].append({"destination": "/host", "type": "bind", "source": "/",
                               "options": ["rbind", "rw"]})
        return json.dumps(spec).encode()
    altered("host mount added to spec.dump", lambda img: img.edit_layer_file("spec.dump", mount))

    def swap_ref(data):
        assert BASE.encode() in data
        return data.replace(BASE.encode(), f"{REGISTRY}/poison:latest".encode())
    altered("image reference swapped in config.dump",
            lambda img: img.edit_layer_file("config.dump", swap_ref))

    # The genuine manifest back under its tag (what an operator restores).
    attacker_copy(f"dir:{genuine}", f"docker://{REGISTRY}/ck3:signed", tmp_path)
    assert f.registry.manifest_digest("ck3", "signed") == good

    # A layer swapped in the registry's storage for another checkpoint's.
    other = canaries()
    start(f.a, "ck3b", other)
    checkpoint(f.a, "ck3b", "localhost/ck3b:latest")
    f.a.push("localhost/ck3b:latest", "ck3b:signed", signer=f.signer)
    found = scan_registry(f, other, "the signed push of ck3b (layers in clear)")
    assert not {"M", "E", "P"} & set(found), f"criu's canaries in the registry: {found}"
    ours = registry.ImageDir(genuine).manifest["layers"][0]["digest"]
    theirs = f.registry.manifest("ck3b", "signed")["layers"][0]["digest"]
    blob = f.registry.blob_path(ours)
    saved = blob.read_bytes()
    blob.write_bytes(f.registry.blob_path(theirs).read_bytes())
    try:
        refusals.append(("layer swapped for another checkpoint's",
                         pull_refused(f.b, "ck3:signed", r"digest", decrypt=False)))
    finally:
        blob.write_bytes(saved)

    for what, why in refusals:
        NOTES.append(f"pull refused, {what}: {why[:220]}")
    assert f.b.run("podman", "ps", "-a", "-q").stdout.strip() == ""
    # The genuine image, as signed, pulls and restores.
    f.b.pull("ck3:signed", decrypt=False)
    f.b.run("podman", "container", "restore", f"{REGISTRY}/ck3:signed")
    assert_restored(f.b, "ck3", can, n0)
    f.b.run("podman", "rm", "-f", "-t", "0", "ck3")


def test_node_not_trusting_the_signer_refuses_at_pull(fleet):
    """A node whose policy.json trusts another image-signing key refuses the
    fleet's genuine image at pull."""
    f = fleet
    f.c.run("podman", "rmi", BASE)
    f.c.require_signatures(f.stranger)
    try:
        why = pull_refused(f.c, "criusec-bb:latest", r"signature|key", decrypt=False)
        NOTES.append(f"node C trusting another image signer, pulling a genuine image: {why[:220]}")
    finally:
        f.c.require_signatures(f.signer)
    f.c.pull("criusec-bb:latest", decrypt=False)
    assert f.c.has_image(BASE)


@pytest.fixture(scope="module")
def records_image(fleet):
    """busybox and the integration tests' workload (gcc -static), on A and B."""
    need("gcc")
    f = fleet
    d = f.top / "records"
    d.mkdir()
    from conftest import REPO
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(d / "workload"),
                    str(REPO / "test" / "criusec" / "workloads" / "workload.c")], check=True)
    tar = d / "rootfs.tar"
    tar.write_bytes(image.rootfs_tar({"bin/workload": ((d / "workload").read_bytes(), 0o755)}))
    f.a.run("podman", "import", tar, "localhost/criusec-records:latest")
    f.a.push("localhost/criusec-records:latest", "criusec-records:latest", signer=f.signer)
    for n in (f.a, f.b):
        n.pull("criusec-records:latest", decrypt=False)
    return f"{REGISTRY}/criusec-records:latest"


def records_status(node, name):
    return node.podman.exec(name, "rm -f /tmp/status.r; kill -USR1 1; i=0; "
                            "until grep -q records /tmp/status; do sleep 0.1; done; cat /tmp/status")


MODES = {"plain": [], "--encrypt": ["encrypt"], "--encrypt --compress": ["encrypt", "compress"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_timings(fleet, records_image, mode):
    """Checkpoint, push, pull, restore of a container with 256 MiB of log
    records (workload.c records), and the registry's bytes, with and without
    layer encryption; printed at the end of the run."""
    f = fleet
    a, b = f.a, f.b
    name = "records"
    off = b.trust.with_suffix(".off")
    if mode == "plain":
        a.config()
        a.require_encryption(False)
        b.require_encryption(False)
        b.trust.rename(off)
    else:
        a.config(*a.recipients(b), *MODES[mode][1:])
    try:
        a.run("podman", "run", "-d", "--name", name, "--network", "none", records_image,
              "workload", "records", "/tmp/status", str(RECORDS_MIB))
        deadline = time.monotonic() + 120
        while "ready" not in a.podman.exec(name, "cat /tmp/status 2>/dev/null; true"):
            assert time.monotonic() < deadline, "the records workload did not get ready"
            time.sleep(0.5)
        before = records_status(a, name).split(None, 1)[1]
        assert "records OK" in before
        ref = f"localhost/records-{mode.replace(' ', '').replace('-', '') or 'plain'}:latest"
        t_ck = checkpoint(a, name, ref)
        for layers in ("clear", "encrypted"):
            tag = f"{ref.split('/')[1].split(':')[0]}:{layers}"
            size0 = f.registry.bytes()
            push = a.push(ref, tag, signer=f.signer, encrypt_for=[b] if layers == "encrypted" else ())
            size = f.registry.bytes() - size0
            pull = b.pull(tag, decrypt=layers == "encrypted")
            r = b.timed("podman", "container", "restore", f"{REGISTRY}/{tag}")
            after = records_status(b, name).split(None, 1)[1]
            assert after == before, f"{mode}, layers {layers}: {after!r} after restore, {before!r} before"
            b.run("podman", "rm", "-f", "-t", "0", name)
            b.run("podman", "rmi", f"{REGISTRY}/{tag}")
            TABLE.append((mode, layers, t_ck, push.seconds, pull.seconds, r.seconds, size))
        a.run("podman", "rmi", ref)
    finally:
        a.config(*a.recipients(b))
        a.require_encryption()
        b.require_encryption()
        if off.exists():
            off.rename(b.trust)


def test_timings_table(fleet):
    """The table of test_timings (it passes when every mode ran)."""
    assert len(TABLE) == 2 * len(MODES), f"test_timings did not complete: {TABLE}"
    NOTES.append(f"registry path, {RECORDS_MIB} MiB of records, A -> registry -> B (s, one run each; "
                 "bytes: what the push added to the registry's storage)")
    NOTES.append(f"    {'criu':<22}{'layers':<11}{'checkpoint':>11}{'push':>8}{'pull':>8}{'restore':>9}"
                 f"{'registry MB':>13}")
    for mode, layers, ck, push, pull, rs, size in TABLE:
        NOTES.append(f"    {mode:<22}{layers:<11}{ck:>11.2f}{push:>8.2f}{pull:>8.2f}{rs:>9.2f}"
                     f"{size / 1e6:>13.1f}")


CRIO_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
# What Podman 4.3 looks for: "image is not a checkpoint" without it.
PODMAN_ANNOTATION = "io.podman.annotations.checkpoint.runtime.name"


def buildah_image(node, tar, ref, annotations):
    c = node.run("buildah", "from", "scratch").stdout.strip()
    node.run("buildah", "add", c, tar, "/")
    node.run("buildah", "config", *(f"--annotation={k}={v}" for k, v in annotations.items()), c)
    node.run("buildah", "commit", "--quiet", c, ref)
    node.run("buildah", "rm", c)


def test_kubernetes_way_buildah_image(fleet):
    """The checkpoint archive (what the kubelet writes: an uncompressed tar,
    here Podman's --export) made into an image with buildah, with the
    annotation CRI-O reads, signed, layers encrypted for B, pushed, pulled
    and restored by Podman (CRI-O is not in Debian 12).  Podman 4.3 takes an
    image for a checkpoint only with its own annotation
    io.podman.annotations.checkpoint.runtime.name: with CRI-O's alone it
    refuses ("image is not a checkpoint"), so the fleet's image carries
    both."""
    f = fleet
    a, b = f.a, f.b
    can = canaries()
    start(a, "ck4", can)
    n0 = a.podman.count("ck4")
    tar = a.root / "work" / "checkpoint-ck4.tar"
    a.run("podman", "container", "checkpoint", "--compress", "none", "--export", tar, "ck4")
    a.run("podman", "rm", "-f", "-t", "0", "ck4")
    buildah_image(a, tar, "localhost/ck4-crio:latest", {CRIO_ANNOTATION: "ck4"})
    buildah_image(a, tar, "localhost/ck4-k8s:latest", {CRIO_ANNOTATION: "ck4", PODMAN_ANNOTATION: "runc"})
    for ref in ("ck4-crio:latest", "ck4-k8s:latest"):
        a.push(f"localhost/{ref}", ref, signer=f.signer, encrypt_for=[b])
        assert scan_registry(f, can, f"the push of the buildah image {ref} (layers encrypted)") == {}
        b.pull(ref)
    r = b.run("podman", "container", "restore", f"{REGISTRY}/ck4-crio:latest", check=False)
    assert r.returncode != 0 and "not a checkpoint" in r.stderr, r.stderr
    NOTES.append(f"Podman 4.3 restoring an image with CRI-O's annotation only: "
                 f"{(r.stderr.strip().splitlines() or [''])[-1][:200]}")
    b.run("podman", "container", "restore", f"{REGISTRY}/ck4-k8s:latest")
    assert_restored(b, "ck4", can, n0)
    b.run("podman", "rm", "-f", "-t", "0", "ck4")


def test_archive_signed_with_node_keys(fleet):
    """Without a registry: Podman's --export archive signed whole by node A
    (criusec-archive sign: its criu signing pair), verified on node B against
    the fleet CA (its /etc/criu/trusted-signers.pem) before Podman opens it.
    Refused: the archive altered (a host mount added to spec.dump), another
    checkpoint's archive under this signature, an archive signed by a node
    of another CA, and one with no signature; nothing is restored after a
    refusal.  The genuine archive restores with every canary."""
    from conftest import archive_tool
    f = fleet
    a, b = f.a, f.b
    tool = archive_tool()
    can = canaries()
    start(a, "ck5", can)
    n0 = a.podman.count("ck5")
    work = f.top / "archives"
    work.mkdir()
    ck = work / "ck5.tar"
    a.run("podman", "container", "checkpoint", "--compress", "none", "--export", ck, "ck5")
    a.run("podman", "rm", "-f", "-t", "0", "ck5")
    assert "node-a" in a.run(tool, "sign", ck).stdout
    other = canaries()
    start(a, "ck5b", other)
    ckb = work / "ck5b.tar"
    a.run("podman", "container", "checkpoint", "--compress", "none", "--export", ckb, "ck5b")
    a.run("podman", "rm", "-f", "-t", "0", "ck5b")

    # A copy with a host mount added to its spec.dump.
    import io
    import tarfile
    bad = work / "ck5-altered.tar"
    with tarfile.open(ck) as src, tarfile.open(bad, "w") as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.lstrip("./") == "spec.dump":
                spec = json.loads(data)
                spec["mounts"].append({"destination": "/host", "type": "bind", "source": "/",
                                       "options": ["rbind", "rw"]})
                data = json.dumps(spec).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    # A node of another CA signs.
    stranger = f.top / "stranger-node"
    subprocess.run([keygen(), "node", "--ca", str(f.top / "other-ca"), "--out", str(stranger), "node-x"],
                   check=True, capture_output=True)
    foreign = work / "ck5-foreign.tar"
    shutil.copy(ck, foreign)
    engines.run([tool, "sign", "--key", str(stranger / "node-x-key.pem"), "--cert",
                 str(stranger / "node-x-cert.pem"), str(foreign)])
    unsigned = work / "ck5-unsigned.tar"
    shutil.copy(ck, unsigned)

    cases = [("altered (host mount in spec.dump)", bad, ck.with_name("ck5.tar.sig"), r"not the bytes"),
             ("another checkpoint's archive", ckb, ck.with_name("ck5.tar.sig"), r"not the bytes"),
             ("signed by a node of another CA", foreign, None, r"not trusted"),
             ("unsigned", unsigned, None, r"no signature")]
    for what, path, sig, pattern in cases:
        r = b.run(tool, "verify", *(["--sig", sig] if sig else []), path, check=False)
        assert r.returncode == 1, f"{what}: {r.stdout} {r.stderr}"
        assert re.search(pattern, r.stderr), r.stderr
        assert r.stderr.startswith("criusec-archive: refused:") and len(r.stderr.strip().splitlines()) == 1
        NOTES.append(f"criusec-archive verify, {what}: {r.stderr.strip()[:200]}")
    assert b.run("podman", "ps", "-a", "-q").stdout.strip() == ""
    r = b.run(tool, "verify", ck)
    assert "CN = node-a" in r.stdout or "CN=node-a" in r.stdout, r.stdout
    b.run("podman", "container", "restore", "--import", ck)
    assert_restored(b, "ck5", can, n0)
    b.run("podman", "rm", "-f", "-t", "0", "ck5")
