"""CRIT and pycriu on real encrypted checkpoints.

Each workload is dumped twice while it keeps running (--leave-running):
once in plaintext, once with --encrypt.  What crit prints for the two must
be the same, field by field, except the fields that differ between any two
dumps (listed in VOLATILE); pages read through pycriu must be the same too.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from pki_util import Pki
from helpers import CRIT_ENV, CRIU, MAGIC, REGIONS, REPO, Workload, free_port, refusal, run_crit

SRC = REPO / "build" / "src"
sys.path[:0] = [str(SRC / "lib"), str(SRC / "crit")]
import pycriu  # noqa: E402
from pycriu import criusec  # noqa: E402


# Fields that differ between any two dumps of one running process:
# "image-name-regex:path-regex" over the JSON of crit decode --pretty.
VOLATILE = [
    r"inventory\.img:entries/0/dump_criu_run_id",
    r"stats-dump:entries/0/dump/\w+_time",
    # a snapshot (copy-on-write by default): the pages the task happened to
    # write before criu saved them
    r"stats-dump:entries/0/dump/pages_cow_fault",
    r"timens-\d+\.img:entries/0/(monotonic|boottime)/tv_n?sec",
    # the dump reads the ghost file: its access time
    r"ghost-file-[0-9a-f]+\.img:entries/0/atim/tv_u?sec",
    # every workload waits for its report in a nanosleep() loop (common.h),
    # so each dump finds it in or out of the syscall: its registers
    r"core-\d+\.img:entries/0/(thread_info/(gpregs|fpregs)/.*|tc/(timers|rseq_entry)/.*)",
]
# ... and, for workloads that keep working (BUSY), the state they work on.
VOLATILE_BUSY = [
    r"pipes-data\.img:entries/\d+/(bytes|extra)",
]
# Workloads whose memory changes between the two dumps (they keep counting).
BUSY = {"counter", "threads", "pipe2"}


def criu_format():
    """The newest checkpoint format this criu writes ("criusec X (format N)")."""
    out = subprocess.run([CRIU, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"criusec \S+ \(formats? ([\d, ]+)\)", out)
    return max(int(n) for n in m.group(1).replace(",", " ").split()) if m else 0


# Tests of what criu itself does with format 2 (its restore, its signed
# dumps): they run once criu writes format 2.
needs_format2_criu = pytest.mark.skipif(criu_format() < 2, reason="criu does not write format 2 yet (issue 10)")


def crit_ok(*args):
    code, out, err = run_crit(*args)
    assert code == 0, f"crit {args}: {err}"
    return out


def without_header(out):
    """crit x DIR ps output without the checkpoint's header, which only an
    encrypted checkpoint has (lines up to the first empty one)."""
    return out.split("\n\n", 1)[1] if out.startswith("checkpoint  ") else out


def crit_cli(*args, stdin=None):
    """crit as a user runs it: its own process, Debian's python3."""
    return subprocess.run(["/usr/bin/python3", "-m", "crit", *map(str, args)], env=CRIT_ENV, stdin=stdin,
                          capture_output=True, text=True, timeout=120)


def flat(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{path}/{k}" if path else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from flat(v, f"{path}/{i}" if path else str(i))
    else:
        yield path, x


def json_diff(a, b):
    fa, fb = dict(flat(a)), dict(flat(b))
    return sorted(p for p in fa.keys() | fb.keys() if fa.get(p, KeyError) != fb.get(p, KeyError))


def volatile(name, path, busy):
    return any(re.fullmatch(v, f"{name}:{path}") for v in VOLATILE + (VOLATILE_BUSY if busy else []))


def images_of(d):
    return {p.name for p in d.iterdir() if p.is_file() and not p.name.endswith(".log")}


def start(workloads, mode, tmp_path):
    args = {"memory": (16,), "fileoff": (tmp_path / "data.bin",), "tcp": (free_port(),)}.get(mode, ())
    return workloads(mode, *args, env={"CANARY": "CANARY-crit-" + mode})


def twin_dumps(criu, wl, tmp_path, keys):
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    # The first dump of a task leaves the page compel writes its syscall
    # into an anonymous copy, which later dumps hold: twins come after it.
    criu.run("dump", tmp_path / "first", "-t", wl.pid, "--leave-running")
    criu.run("dump", plain, "-t", wl.pid, "--leave-running")
    criu.run("dump", enc, "-t", wl.pid, "--leave-running", "--encrypt", "--tls-cert", keys["alice"][0])
    return plain, enc


@pytest.mark.parametrize("mode", ["counter", "memory", "fileoff", "tcp", "threads", "pipe2", "secrets"])
def test_crit_sees_the_same_checkpoint(mode, workloads, criu, tmp_path, keys):
    wl = start(workloads, mode, tmp_path)
    plain, enc = twin_dumps(criu, wl, tmp_path, keys)
    key = keys["alice"][1]

    tags = {n for n in images_of(enc) if n.startswith("pagetags-")}
    # the page cipher: one tag image per page image
    assert tags == {n.replace("pages-", "pagetags-") for n in images_of(plain) if n.startswith("pages-")}
    assert images_of(enc) - {"cipher.img", "cipher-manifest.img"} - tags == images_of(plain)
    assert (enc / "pstree.img").read_bytes()[:8] == MAGIC

    # crit decode --pretty and info, every image that is not raw data
    decoded = 0
    for name in sorted(images_of(plain)):
        if name.startswith("pages-"):
            continue
        p = crit_ok("decode", "--pretty", "-i", plain / name)
        e = crit_ok("decode", "--pretty", "-i", enc / name, "--tls-key", key)
        diffs = [d for d in json_diff(json.loads(p), json.loads(e)) if not volatile(name, d, mode in BUSY)]
        assert diffs == [], f"{name}: crit decode differs in {diffs}"
        # (upstream crit info fails on some kinds, ghost files: the same way)
        assert run_crit("info", plain / name) == run_crit("info", enc / name, "--tls-key", key), name
        decoded += 1
    assert decoded >= 10

    # crit x: every explorer prints the same
    for what in ("ps", "fds", "mems", "rss"):
        assert without_header(crit_ok("x", enc, what, "--tls-key", key)) == crit_ok("x", plain, what), what

    # pages through pycriu: the same addresses; the same contents unless the task is busy
    ck_p, ck_e = criusec.Checkpoint(plain), criusec.Checkpoint(enc, key)
    pagemaps = sorted(n for n in images_of(plain) if n.startswith("pagemap-"))
    assert pagemaps
    for pm in pagemaps:
        pp, pe = dict(ck_p.pages(pm)), dict(ck_e.pages(pm))
        assert sorted(pp) == sorted(pe), pm
        changed = {hex(v): sum(a != b for a, b in zip(pp[v], pe[v])) for v in pp if pp[v] != pe[v]}
        if mode in BUSY:
            assert len(changed) <= 8, changed
        else:
            # An idle task's pages differ only where the kernel wrote
            # between the dumps (the rseq area's cpu id): a few bytes.
            assert all(n <= 16 for n in changed.values()), f"{pm}: pages differ: {changed}"


def proc_bytes(pid, what):
    with open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read()


def test_pycriu_reads_argv_environ_and_memory(workloads, criu, tmp_path, keys):
    wl = start(workloads, "memory", tmp_path)
    _, enc = twin_dumps(criu, wl, tmp_path, keys)
    ck = criusec.Checkpoint(enc, keys["alice"][1])
    mm = ck.load(f"mm-{wl.pid}.img")["entries"][0]
    argv = ck.read_memory(wl.pid, mm["mm_arg_start"], mm["mm_arg_end"] - mm["mm_arg_start"])
    env = ck.read_memory(wl.pid, mm["mm_env_start"], mm["mm_env_end"] - mm["mm_env_start"])
    assert argv == proc_bytes(wl.pid, "cmdline")
    assert env == proc_bytes(wl.pid, "environ")
    assert b"CANARY=CANARY-crit-memory\0" in env

    # The 16 MiB anonymous mapping: the workload's xorshift pattern, and
    # the live process's memory, page for page.
    vma = next(v for v in mm["vmas"] if v["end"] - v["start"] == 16 << 20)
    s, want = 0x9e3779b97f4a7c15, []
    for _ in range(64):
        s ^= (s << 13) & (2**64 - 1)
        s ^= s >> 7
        s ^= (s << 17) & (2**64 - 1)
        want.append(s.to_bytes(8, "little"))
    assert ck.read_memory(wl.pid, vma["start"], 64) == b"".join(want)[:64]
    pages = dict(ck.pages(f"pagemap-{wl.pid}.img", vma["start"], vma["end"]))
    assert len(pages) == 4096
    with open(f"/proc/{wl.pid}/mem", "rb") as mem:
        for v in sorted(pages)[::97]:
            mem.seek(v)
            assert mem.read(4096) == pages[v], hex(v)
    for mib in range(16):
        assert ck.read_memory(wl.pid, vma["start"] + (mib << 20) + 64, 18) == b"CANARY-crit-memory"

    # crit x DIR mems --pages shows them
    out = crit_ok("x", enc, "mems", "--pages", "%x+20" % (vma["start"] + 64), "--tls-key", keys["alice"][1])
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0] == str(wl.pid)
    assert lines[1] == "\t%016x  %s  |CANARY-crit-memo|" % (
        vma["start"] + 64, " ".join("%02x" % c for c in b"CANARY-crit-memo"))


@pytest.fixture
def secrets_dump(workloads, criu, tmp_path, keys):
    wl = start(workloads, "secrets", tmp_path)
    criu.dump(wl, tmp_path / "enc", "--encrypt", "--tls-cert", keys["alice"][0])
    return wl, tmp_path / "enc"


def test_crit_refusals(secrets_dump, tmp_path, keys):
    wl, enc = secrets_dump
    core = f"core-{wl.pid}.img"
    alice, mallory = keys["alice"][1], keys["mallory"][1]
    assert crit_cli("show", enc / core, "--tls-key", alice).returncode == 0

    if not os.access(criusec.DEFAULT_KEY, os.R_OK):
        refusal(crit_cli("show", enc / core), core, "encrypted image; pass --tls-key")
        refusal(crit_cli("x", enc, "ps"), str(enc), "encrypted checkpoint; pass --tls-key")
    refusal(crit_cli("show", enc / core, "--tls-key", mallory), core, "no recipient stanza", mallory)
    refusal(crit_cli("x", enc, "fds", "--tls-key", mallory), "no recipient stanza")
    refusal(crit_cli("info", enc / core, "--tls-key", tmp_path / "none.pem"), "none.pem")
    with open(enc / core, "rb") as f:
        refusal(crit_cli("decode", stdin=f), "standard input", "encrypted image")

    def damaged(tag, name, how):
        d = tmp_path / tag
        shutil.copytree(enc, d)
        how(d / name)
        return d

    def flip(p):
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x10
        p.write_bytes(bytes(b))

    d = damaged("flip", core, flip)
    refusal(crit_cli("show", d / core, "--tls-key", alice), core, "failed authentication")
    refusal(crit_cli("x", d, "ps", "--tls-key", alice), core, "failed authentication")
    d = damaged("cut", "files.img", lambda p: p.write_bytes(p.read_bytes()[:-5]))
    refusal(crit_cli("x", d, "fds", "--tls-key", alice), "files.img")
    # A plugin's image written beside the checkpoint in clear (or added): as criu restore, crit refuses it.
    d = damaged("plugin", core, lambda p: None)
    (d / "amdgpu-kfd-1.img").write_bytes(b"GPU memory in clear")
    refusal(crit_cli("x", d, "ps", "--tls-key", alice), "amdgpu-kfd-1.img", "not in the checkpoint's manifest")
    (d / "amdgpu-kfd-1.img").unlink()
    (d / "stats-restore").write_bytes(b"criu's own, in clear by design")
    assert crit_cli("x", d, "ps", "--tls-key", alice).returncode == 0
    d = damaged("hdr", "cipher.img", flip)
    refusal(crit_cli("show", d / "pstree.img", "--tls-key", alice), "cipher.img")
    d = damaged("nohdr", "cipher.img", lambda p: p.unlink())
    refusal(crit_cli("show", d / "pstree.img", "--tls-key", alice), "pstree.img",
            "encrypted, but there is no cipher.img beside it")
    d = damaged("swap", "fifo-data.img", lambda p: shutil.copy(p.parent / "pipes-data.img", p))
    # Another image's stream: refused unread when its size differs (format 2 records every
    # image's size), else by its first chunk (the name is in every chunk's AAD).
    r = crit_cli("show", d / "fifo-data.img", "--tls-key", alice)
    same_size = (enc / "fifo-data.img").stat().st_size == (enc / "pipes-data.img").stat().st_size
    assert ("chunk 0 failed authentication" if same_size else "the manifest records") in r.stderr, r.stderr
    refusal(r, "fifo-data.img")
    d = damaged("gone", "files.img", lambda p: p.unlink())
    r = crit_cli("x", d, "fds", "--tls-key", alice)
    refusal(r, "files.img", "missing")
    assert r.stdout == "", "crit x printed from a damaged checkpoint"
    d = damaged("plain", "pstree.img",
                lambda p: p.write_bytes(pycriu.images.dumps(crit_json(enc / "pstree.img", alice))))
    refusal(crit_cli("x", d, "ps", "--tls-key", alice), "pstree.img", "the manifest records")


def crit_json(path, key):
    return json.loads(crit_ok("decode", "-i", path, "--tls-key", key))


@needs_format2_criu
def test_crit_encode_edits_an_encrypted_checkpoint(secrets_dump, criu, tmp_path, keys):
    """decode -> edit -> encode into the checkpoint, restore it: the edit is there."""
    wl, enc = secrets_dump
    alice = keys["alice"][1]
    core = enc / f"core-{wl.pid}.img"
    img = crit_json(core, alice)
    assert img["entries"][0]["tc"]["comm"] == "workload"
    img["entries"][0]["tc"]["comm"] = "edited"
    (tmp_path / "core.json").write_text(json.dumps(img))
    r = crit_cli("encode", "-i", tmp_path / "core.json", "-o", core, "--tls-key", alice)
    assert r.returncode == 0, r.stderr
    assert core.read_bytes()[:8] == MAGIC and (core.stat().st_mode & 0o077) == 0
    assert crit_json(core, alice) == img
    refusal(crit_cli("encode", "-i", tmp_path / "core.json", "--tls-key", alice), "standard output")
    criu.restore(enc, "--tls-key", alice)
    assert proc_bytes(wl.pid, "comm") == b"edited\n"
    assert wl.report() == "secrets OK"


def test_crit_recode_script(secrets_dump, tmp_path, keys):
    """ZDTM's crit-recode check (test/crit-recode.py) on an encrypted checkpoint."""
    _, enc = secrets_dump
    script = SRC / "test" / "crit-recode.py"
    r = subprocess.run(["/usr/bin/python3", script, "--tls-key", keys["alice"][1], enc], env=CRIT_ENV,
                       capture_output=True, text=True, timeout=120, cwd=SRC)
    assert r.returncode == 0 and r.stdout.strip().endswith("PASS"), r.stdout + r.stderr
    r = subprocess.run(["/usr/bin/python3", script, "--tls-key", keys["mallory"][1], enc], env=CRIT_ENV,
                       capture_output=True, text=True, timeout=120, cwd=SRC)
    assert r.returncode == 1 and "no recipient stanza" in r.stdout, r.stdout + r.stderr


def test_pycriu_reads_every_kind_of_page(tmp_path, criu, keys):
    """Private, MAP_SHARED, memfd and SysV shared memory (pagemap-<pid> and
    pagemap-shmem-<id> images): through pycriu, the encrypted checkpoint's
    pages are the plaintext checkpoint's, and every region's canary is
    there, though no file of the encrypted checkpoint holds one."""
    binary = tmp_path / "memcanary"
    subprocess.run(["gcc", "-O2", "-o", binary, REPO / "test" / "criusec" / "workloads" / "memcanary.c"], check=True)
    canary = "CANARY-crit-pages"
    wl = Workload(str(binary), "memcanary", tmp_path, (), {"CANARY": canary})
    try:
        assert wl.report() == "memcanary OK 0"
        plain, enc = twin_dumps(criu, wl, tmp_path, keys)
    finally:
        wl.kill()
    assert not any(canary.encode() in p.read_bytes() for p in enc.iterdir() if p.is_file() and p.suffix == ".img")
    ck_p, ck_e = criusec.Checkpoint(plain), criusec.Checkpoint(enc, keys["alice"][1])
    pagemaps = sorted(n for n in images_of(plain) if n.startswith("pagemap-"))
    assert any(n.startswith("pagemap-shmem-") for n in pagemaps)
    found = set()
    for pm in pagemaps:
        pp, pe = dict(ck_p.pages(pm)), dict(ck_e.pages(pm))
        assert sorted(pp) == sorted(pe), pm
        changed = {hex(v): sum(a != b for a, b in zip(pp[v], pe[v])) for v in pp if pp[v] != pe[v]}
        assert all(n <= 16 for n in changed.values()), f"{pm}: pages differ: {changed}"
        data = b"".join(pe[v] for v in sorted(pe))
        found |= {r for r in REGIONS if f"{canary}-{r}".encode() in data}
    assert found == set(REGIONS)
    # whole page images, decrypted in file order through their pagemaps
    for name in sorted(n for n in images_of(plain) if n.startswith("pages-")):
        a, b = ck_p.read(name), ck_e.read(name)
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 64, name
    for what in ("mems", "rss"):
        assert crit_ok("x", enc, what, "--tls-key", keys["alice"][1]) == crit_ok("x", plain, what)


@pytest.fixture(scope="module")
def pki():
    return Pki()


def test_crit_on_a_real_dump_sealed_again_as_format2(secrets_dump, pki, tmp_path, keys):
    """A real encrypted dump (of whatever format criu writes), sealed again
    by pycriu with a signature: every image reads the same, the manifest
    records real sizes and digests, crit shows the signer and holds the
    checkpoint to --trust."""
    wl, enc = secrets_dump
    alice = keys["alice"][1]
    ck = criusec.Checkpoint(enc, alice)
    n = ck.verify()
    before = {name: ck.read(name) for _, name in ck.manifest()}
    kp, cp = pki.leaf["p256"].write(tmp_path, [pki.inter])
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "stranger.pem").write_bytes(pki.stranger.pem)
    ck.reseal(criusec.Signer.from_files(kp, cp))

    ck = criusec.Checkpoint(enc, alice, trust=str(tmp_path / "root.pem"))
    assert ck.verify() == n and {name: ck.read(name) for _, name in ck.manifest()} == before
    assert ck.header["version"] == 2 and ck.report["trusted"] == "CA CN=criusec test root"
    for name, _, size, digest in criusec.decode_manifest(ck.read("cipher-manifest.img")):
        assert size == (enc / name).stat().st_size and digest == hashlib.sha256(before[name]).digest(), name
    out = crit_ok("x", enc, "ps", "--tls-key", alice, "--trust", tmp_path / "root.pem")
    assert "signer      CN=signer-p256 (ecdsa-p256-sha256)" in out
    assert "trusted     yes (CA CN=criusec test root)" in out
    assert without_header(out).splitlines()[1].split()[0] == str(wl.pid)
    assert crit_cli("x", enc, "mems", "--tls-key", alice, "--trust", tmp_path / "root.pem").returncode == 0
    refusal(crit_cli("x", enc, "fds", "--tls-key", alice, "--trust", tmp_path / "stranger.pem"),
            "cipher.img: untrusted signer")
    # ZDTM's recode check, cipher.img of format 2 included
    r = subprocess.run(["/usr/bin/python3", SRC / "test" / "crit-recode.py", "--tls-key", alice, enc], env=CRIT_ENV,
                       capture_output=True, text=True, timeout=120, cwd=SRC)
    assert r.returncode == 0 and r.stdout.strip().endswith("PASS"), r.stdout + r.stderr
    # a listed image replaced by another genuine one of the same checkpoint: its digest differs
    core = f"core-{wl.pid}.img"
    shutil.copy(enc / core, tmp_path / "core.bak")
    ck = criusec.Checkpoint(enc, alice)
    pt = before[core]
    (enc / core).write_bytes(ck.seal(core, pt[:-1] + bytes([pt[-1] ^ 1])))
    refusal(crit_cli("show", enc / core, "--tls-key", alice), core, "not the one the manifest records")
    shutil.copy(tmp_path / "core.bak", enc / core)
    assert crit_cli("show", enc / core, "--tls-key", alice, "--trust", tmp_path / "root.pem").returncode == 0


@needs_format2_criu
def test_crit_shows_the_signer_of_a_signed_dump(workloads, criu, pki, tmp_path, keys):
    """criu dump --sign-key/--sign-cert: crit info DIR and crit x DIR ps show
    who signed, and --trust decides whether crit reads it."""
    wl = start(workloads, "secrets", tmp_path)
    kp, cp = pki.leaf["ed25519"].write(tmp_path, [pki.inter])
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "stranger.pem").write_bytes(pki.stranger.pem)
    enc = tmp_path / "enc"
    criu.dump(wl, enc, "--encrypt", "--tls-cert", keys["alice"][0], "--sign-key", kp, "--sign-cert", cp)
    alice = keys["alice"][1]
    info = json.loads(crit_ok("info", enc, "--tls-key", alice, "--trust", tmp_path / "root.pem"))
    assert info["format"] == 2 and info["signature"] == "verified" and info["sig_alg"] == "ed25519"
    assert info["chain"] == ["CN=signer-ed25519", "CN=criusec test intermediate"]
    assert info["trusted"] == "CA CN=criusec test root" and info["mac"] == "verified" and info["refused"] is None
    assert info["parent_id"] is None and len(info["recipients"]) == 1
    out = crit_ok("x", enc, "ps", "--tls-key", alice, "--trust", tmp_path / "root.pem")
    assert "signature   verified" in out and "trusted     yes (CA CN=criusec test root)" in out
    refusal(crit_cli("x", enc, "ps", "--tls-key", alice, "--trust", tmp_path / "stranger.pem"), "untrusted signer")
    assert criusec.Checkpoint(enc, alice, trust=str(tmp_path / "root.pem")).verify() > 5
