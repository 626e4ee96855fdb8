"""The stream layer's paths, one test each: a fresh canary planted in one
kind of kernel state that criu saves in an image of its own (TCP queues,
tmpfs archives, the net namespace's ip/iptables/nftables dumps, BPF maps,
SysV IPC, tty queues, chunked ghost files, the irmap cache).

Each test proves three things:
  1. the path is really taken: a plain dump (--leave-running) of the same
     state has the canary in the expected image;
  2. ``dump --encrypt`` leaves it in no file criu wrote, in the images dir
     or the work dir (gzip members are also scanned decompressed), and the
     images of that kind are streams (magic ``CRIUSEC\\x01``); the paths
     with the most data also run with ``--compress``, their streams then
     compressed (byte 11);
  3. restore with ``--tls-key`` brings the state back: the workload reads
     the canary again from the restored kernel object.
The workloads are in workloads/canary.c."""
import fnmatch
import glob
import gzip
import ipaddress
import pathlib
import re
import secrets
import shutil
import struct
import subprocess
import zlib

import pytest
from helpers import CRIU, MAGIC, free_port, hex_canary, tree_pids, wait_gone


# Every file is scanned, page images too (the page cipher encrypts them).
# A prefix here would leave matching files out of the scans.
UNSCANNED_PREFIX = None


def _members(data):
    """data, and for gzip data (criu's tmpfs archives) its decompressed bytes."""
    out = [data]
    if data[:2] == b"\x1f\x8b":
        try:
            out.append(gzip.decompress(data))
        except (OSError, EOFError, zlib.error):
            # A partial or odd archive: decompress what can be.
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out.append(d.decompress(data))
            except zlib.error:
                pass
    return out


def files_in(*dirs):
    for d in dirs:
        for p in sorted(pathlib.Path(d).rglob("*")):
            if p.is_file():
                yield p


def find(needle, *dirs, skip_logs=False):
    """Names of the files under dirs holding needle (raw or gunzipped)."""
    hits = []
    for p in files_in(*dirs):
        if UNSCANNED_PREFIX and p.name.startswith(UNSCANNED_PREFIX):
            continue
        if skip_logs and p.name.endswith(".log"):
            continue
        if any(needle in m for m in _members(p.read_bytes())):
            hits.append(p.name)
    return hits


def images(d, pattern):
    return sorted(pathlib.Path(p) for p in glob.glob(str(pathlib.Path(d) / pattern)))


def assert_in_plain(run, needles, kinds):
    """Each needle is in an image of one of the kinds in the plain dump."""
    img, work = run.dirs("plain")
    for what, needle in needles.items():
        hits = find(needle, img, work)
        assert any(fnmatch.fnmatch(h, k) for h in hits for k in kinds), \
            f"{what}: not in any {kinds} of the plain dump (found in {hits}): the path is not exercised"


def assert_encrypted(run, needles, kinds, name="img", skip_logs=False):
    img, work = run.dirs(name)
    assert (img / "cipher.img").exists(), "no cipher.img: the dump was not encrypted"
    for what, needle in needles.items():
        assert find(needle, img, work, skip_logs=skip_logs) == [], f"{what} left in plaintext"
    seen = []
    for k in kinds:
        for p in images(img, k):
            head = p.read_bytes()[:12]
            assert head[:8] == MAGIC, f"{p.name} is not an encrypted stream"
            if name == "img" and run.compress:
                assert head[11] == {"lz4": 1, "zstd": 2}[run.compress], f"{p.name} is not compressed"
            seen.append(p.name)
    assert seen, f"no image {kinds} in the encrypted dump"
    return seen


def round_trip(run, wl, needles, kinds, dump_args=(), restore_args=(), report=None):
    run.plain_dump(wl, *dump_args)
    assert_in_plain(run, needles, kinds)
    run.encrypted_dump(wl, *dump_args)
    assert_encrypted(run, needles, kinds)
    run.restore(*restore_args)
    if report is not None:
        assert wl.report() == report


# 1. TCP queues ---------------------------------------------------------------

@pytest.mark.parametrize("run", [None, "lz4"], indirect=True, ids=["plain-streams", "compressed"])
def test_tcp_queues(run):
    c = hex_canary()
    wl = run.start("tcpq", free_port(), canary=c)
    st = dict(kv.split("=") for kv in wl.last.split()[2:])
    mark = len(c) + 1
    # "R"+canary heads the stream, "S"+canary ends it: unread and unsent.
    assert int(st["inq"]) >= mark, f"nothing unread in the receive queue: {wl.last}"
    assert int(st["notsent"]) >= mark, f"the end of the stream was sent already: {wl.last}"
    assert int(st["inq"]) + int(st["outq"]) == int(st["total"]), wl.last
    needles = {"receive queue": b"R" + c.encode(), "unsent send queue": b"S" + c.encode()}
    round_trip(run, wl, needles, ["tcp-stream-*.img"], dump_args=["--tcp-established"],
               restore_args=["--tcp-established"], report=f"tcpq OK {st['total']}")


# 2. tmpfs archives -----------------------------------------------------------

@pytest.mark.parametrize("run", [None, "zstd"], indirect=True, ids=["plain-streams", "compressed"])
def test_tmpfs_archive(run):
    c = hex_canary()
    root, mnt = run.tmp / "root", run.tmp / "mnt"
    root.mkdir()
    mnt.mkdir()
    wl = run.start("tmpfs", root, mnt, canary=c)
    needles = {"tmpfs file": c.encode()}
    run.plain_dump(wl)
    # criu gzips the archive: the canary is found in it decompressed.
    (tar,) = images(run.tmp / "plain", "tmpfs-dev-*.tar.gz.img")
    assert c.encode() in gzip.decompress(tar.read_bytes())
    assert_in_plain(run, needles, ["tmpfs-dev-*.tar.gz.img"])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, ["tmpfs-dev-*.tar.gz.img", "mountpoints-*.img"])
    # The namespace's root mount is the host's "/": criu needs --root for
    # it (4.2.1 without --root hits "BUG at criu/mount.c:48" in mount-v2's
    # service_mountpoint() while cleaning the cloned namespace).
    run.restore("--root", "/")
    assert wl.report() == "tmpfs OK"


# 3. The net namespace: ip addr/route/rule, iptables, nftables -------------------

def nsenter(pid, *cmd, check=True):
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True,
                          timeout=60, check=check)


def ula(b):
    """fdxx:... from 16 bytes whose first is 0xfd."""
    return ":".join(b[i:i + 2].hex() for i in range(0, 16, 2))


def test_netns_ip_dumps(run):
    c = hex_canary()
    wl = run.start("netns", canary=c)
    label = "lo:" + hex_canary(12)            # IFNAMSIZ: at most 15 characters
    iif = "x" + hex_canary(14)
    a6, r6 = b"\xfd" + secrets.token_bytes(15), b"\xfd" + secrets.token_bytes(15)
    dst4 = bytes([10]) + secrets.token_bytes(3)
    metric = secrets.randbelow(1 << 30) + 1024
    table = secrets.randbelow(1 << 30) + 1024
    for cmd in (["ip", "addr", "add", "10.77.0.1/32", "dev", "lo", "label", label],
                ["ip", "-6", "addr", "add", ula(a6) + "/128", "dev", "lo", "nodad"],
                ["ip", "route", "add", ".".join(map(str, dst4)) + "/32", "dev", "lo", "metric", str(metric)],
                ["ip", "-6", "route", "add", ula(r6) + "/128", "dev", "lo"],
                ["ip", "rule", "add", "iif", iif, "table", str(table)]):
        nsenter(wl.pid, *cmd)
    # ip's dumps are netlink messages: addresses and numbers are raw attributes.
    needles = {
        "ifaddr label": label.encode(), "ifaddr ipv6": a6,
        "route dst": struct.pack("<HH", 8, 1) + dst4, "route metric": struct.pack("<HHI", 8, 6, metric),
        "route6 dst": r6, "rule iif": iif.encode(),
    }
    kinds = {"ifaddr label": "ifaddr-*.img", "ifaddr ipv6": "ifaddr-*.img", "route dst": "route-*.img",
             "route metric": "route-*.img", "route6 dst": "route6-*.img", "rule iif": "rule-*.img"}
    run.plain_dump(wl)
    for what, needle in needles.items():
        assert_in_plain(run, {what: needle}, [kinds[what]])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, sorted(set(kinds.values())))
    run.restore()
    assert wl.report() == "idle OK"
    addr = nsenter(wl.pid, "ip", "addr", "show", "dev", "lo").stdout
    assert label in addr and ula(a6) in expand_v6(addr)
    assert f"metric {metric}" in nsenter(wl.pid, "ip", "route", "show").stdout
    assert ula(r6) in expand_v6(nsenter(wl.pid, "ip", "-6", "route", "show").stdout)
    assert re.search(rf"iif {iif} .*lookup {table}", nsenter(wl.pid, "ip", "rule", "show").stdout)


def expand_v6(text):
    """Every IPv6 address in text, written out in full (16 bits per group)."""
    out = []
    for tok in re.findall(r"[0-9a-f:]{6,}", text):
        try:
            out.append(ipaddress.IPv6Address(tok).exploded)
        except ValueError:
            pass
    return " ".join(out)


def legacy_iptables(v6):
    """The iptables criu dumps: like criu's get_legacy_iptables_bin(), the
    plain one unless it has the nf_tables backend, then *-legacy."""
    base = "ip6tables" if v6 else "iptables"
    for b in (base, base + "-legacy"):
        if shutil.which(b) is None:
            continue
        v = subprocess.run([b, "-V"], capture_output=True, text=True)
        if v.returncode == 0 and "nf_tables" not in v.stdout:
            return b
    return None


def test_netns_iptables(run):
    ipt, ip6t = legacy_iptables(False), legacy_iptables(True)
    if not ipt or not ip6t:
        pytest.skip("no legacy (x_tables) iptables/ip6tables: criu dumps nf_tables rules with nftables")
    c = hex_canary()
    wl = run.start("netns", canary=c)
    for tool, name in ((ipt, "ipt4-"), (ip6t, "ipt6-")):
        r = nsenter(wl.pid, tool, "-A", "INPUT", "-m", "comment", "--comment", name + c, "-j", "ACCEPT",
                    check=False)
        if r.returncode != 0:
            pytest.skip(f"{tool} cannot add a rule here (kernel without x_tables?): {r.stderr.strip()}")
    needles = {"iptables comment": b"ipt4-" + c.encode(), "ip6tables comment": b"ipt6-" + c.encode()}
    run.plain_dump(wl)
    assert_in_plain(run, {"iptables comment": needles["iptables comment"]}, ["iptables-*.img"])
    assert_in_plain(run, {"ip6tables comment": needles["ip6tables comment"]}, ["ip6tables-*.img"])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, ["iptables-*.img", "ip6tables-*.img"])
    run.restore()
    assert wl.report() == "idle OK"
    assert "ipt4-" + c in nsenter(wl.pid, ipt + "-save").stdout
    assert "ipt6-" + c in nsenter(wl.pid, ip6t + "-save").stdout


def test_netns_nftables(run):
    if shutil.which("nft") is None:
        pytest.skip("no nft tool to set up a ruleset")
    c = hex_canary()
    wl = run.start("netns", canary=c)
    script = (f'table inet criusec {{\n'
              f'  set s {{ type ipv4_addr; elements = {{ 10.9.8.7 }}; comment "set-{c}"; }}\n'
              f'  chain c {{ counter comment "rule-{c}"; }}\n'
              f'}}\n')
    r = subprocess.run(["nsenter", "-t", str(wl.pid), "-n", "nft", "-f", "-"], input=script,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"nft cannot load a ruleset here: {r.stderr.strip()}")
    needles = {"nft rule comment": f"rule-{c}".encode(), "nft set comment": f"set-{c}".encode()}
    run.plain_dump(wl)
    if not images(run.tmp / "plain", "nftables-*.img"):
        pytest.skip("this criu wrote no nftables image: built without libnftables")
    assert_in_plain(run, needles, ["nftables-*.img"])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, ["nftables-*.img"])
    run.restore()
    assert wl.report() == "idle OK"
    ruleset = nsenter(wl.pid, "nft", "list", "ruleset").stdout
    assert f"rule-{c}" in ruleset and f"set-{c}" in ruleset


# 4. BPF maps -----------------------------------------------------------------

def test_bpf_map(run):
    c = hex_canary()
    wl = run.start("bpf", canary=c)
    if "unsupported" in wl.last:
        pytest.skip(f"the kernel cannot make a BPF map here: {wl.last.split(': ', 1)[1]}")
    r = run.plain_dump(wl, check=False)
    if r.returncode != 0:
        why = [ln for ln in r.log.splitlines() if "bpf" in ln.lower() or "unsupported" in ln.lower()]
        if any("bpf-map" in ln for ln in why):
            pytest.skip("this criu cannot dump BPF maps (built without libbpf, CONFIG_HAS_LIBBPF "
                        f"unset: dump_unsupp_fd): {why[-1].strip()}")
        raise AssertionError("plain dump of a BPF map failed:\n" + "\n".join(r.log.splitlines()[-30:]))
    needles = {"bpf map value": c.encode()}
    assert_in_plain(run, needles, ["bpfmap-data.img"])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, ["bpfmap-data.img", "bpfmap-file.img"])
    run.restore()
    assert wl.report() == "bpf OK"


# 5. SysV IPC -----------------------------------------------------------------

@pytest.mark.parametrize("run", [None, "zstd"], indirect=True, ids=["plain-streams", "compressed"])
def test_sysv_ipc(run):
    c = hex_canary()
    wl = run.start("ipc", canary=c)
    sems = [int(c[4 * i:4 * i + 4], 16) & 0x7fff for i in range(6)]
    needles = {"message": c.encode(), "semaphore values": struct.pack("<6H", *sems)}
    run.plain_dump(wl)
    assert_in_plain(run, {"message": needles["message"]}, ["ipcns-msg-*.img"])
    assert_in_plain(run, {"semaphore values": needles["semaphore values"]}, ["ipcns-sem-*.img"])
    run.encrypted_dump(wl)
    assert_encrypted(run, needles, ["ipcns-msg-*.img", "ipcns-sem-*.img", "ipcns-var-*.img"])
    run.restore()
    assert wl.report() == "ipc OK"


# 6. tty queues ---------------------------------------------------------------

def test_tty_queued_data(run):
    """criu saves data queued in a pty pair whose both ends the dumped tasks
    hold (tty.c, tty_dump_queued_data), in tty-data.img."""
    c = hex_canary()
    wl = run.start("tty", canary=c)
    needles = {"master->slave": b"M" + c.encode(), "slave->master": b"S" + c.encode()}
    round_trip(run, wl, needles, ["tty-data.img"], report="tty OK")


# 7. Chunked ghost files --------------------------------------------------------

GHOST_SIZE = 4 << 20
# The head, after 1 MiB of hole, across a block boundary, at the tail.
GHOST_OFFSETS = (100, (1 << 20) + 333, (3 << 20) - 10, GHOST_SIZE - 64)


@pytest.mark.parametrize("run", [None, "zstd"], indirect=True, ids=["plain-streams", "compressed"])
@pytest.mark.parametrize("chunker", ["--ghost-fiemap", "--no-ghost-fiemap"])
def test_chunked_ghost_file(run, chunker):
    """A sparse deleted file over criu's GHOST_CHUNKS_THRESH (12 KiB) is saved
    as chunks (files-reg.c: copy_file_to_chunks_fiemap / SEEK_DATA)."""
    c = hex_canary()
    wl = run.start("ghost", run.tmp / "ghost.data", GHOST_SIZE, *GHOST_OFFSETS, canary=c)
    needles = {f"canary at {o}": f"G{o}{c}".encode() for o in GHOST_OFFSETS}
    run.plain_dump(wl, chunker)
    assert_in_plain(run, needles, ["ghost-file-*.img"])
    (g,) = images(run.tmp / "plain", "ghost-file-*.img")
    assert g.stat().st_size < GHOST_SIZE // 4, "the ghost was not saved as chunks (holes were copied)"
    run.encrypted_dump(wl, chunker)
    assert_encrypted(run, needles, ["ghost-file-*.img"])
    run.restore()
    assert wl.report() == "ghost OK"


# 8. The irmap cache --------------------------------------------------------------

def test_irmap_cache(run):
    """The irmap cache (file "irmap-cache", no .img) holds the paths of
    inotify/fanotify watches.  Only pre-dump writes it (irmap.c,
    irmap_predump_run), into the work dir, and the next dump with the same
    work dir reads it back (encrypted: with its parent's key).  pre-dump
    needs memory tracking (soft-dirty, or userfaultfd write-protect)."""
    chk = subprocess.run([CRIU, "check", "--feature", "mem_dirty_track"], capture_output=True, text=True)
    if chk.returncode != 0:
        pytest.skip("the irmap cache is written only by pre-dump, which needs memory tracking "
                    "(soft-dirty, or userfaultfd write-protect); criu check --feature mem_dirty_track: "
                    + (chk.stderr.strip().splitlines() or ["failed"])[-1])
    c = hex_canary()
    d = run.tmp / f"irmap-{c}"
    d.mkdir()
    watched = d / "watched"
    watched.write_text("x")
    wl = run.start("inotify", watched, canary=c)
    needles = {"watched path": c.encode()}
    # Plain: the pre-dump writes the cache, with the path, in its work dir.
    run.criu("pre-dump", "plain", "-t", wl.pid)
    assert find(c.encode(), run.tmp / "plain-work", skip_logs=True) == ["irmap-cache"]
    # Encrypted: pre-dump, then dump on top of it with the same work dir.
    enc = ["--encrypt", "--tls-cert", run.cert, "--tls-key", run.key]
    run.criu("pre-dump", "pre", "-t", wl.pid, *enc)
    cache = run.tmp / "pre-work" / "irmap-cache"
    assert cache.exists() and cache.read_bytes()[:8] == MAGIC, "the irmap cache is not a stream"
    # A cache altered in the work dir fails its parent's key: only a cache, so the dump goes on without it.
    shutil.copytree(run.tmp / "pre-work", run.tmp / "flip-work")
    flipped = bytearray(cache.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10
    (run.tmp / "flip-work" / "irmap-cache").write_bytes(bytes(flipped))
    run.criu("dump", "flip", "-t", wl.pid, "--leave-running", "--prev-images-dir", "../pre", *enc)
    log = (run.tmp / "flip-work" / "dump.log").read_text()
    assert "Ignoring the encrypted irmap-cache" in log and "irmap: Loading irmap cache" not in log, log[-3000:]
    # A cache that fails is said as a warning: a dump that goes on logs no error.
    assert not [ln for ln in log.splitlines() if "Error" in ln and "irmap" in ln], log[-3000:]
    # The genuine cache, with the same parent.
    shutil.copytree(run.tmp / "pre-work", run.tmp / "img-work")
    pids = tree_pids(wl.pid)
    run.criu("dump", "img", "-t", wl.pid, "--track-mem", "--prev-images-dir", "../pre", *enc)
    wait_gone(pids)
    assert "irmap: Loading irmap cache" in (run.tmp / "img-work" / "dump.log").read_text()
    # The logs name the path ("Irmap cache ... -> PATH"): they are left out.
    # A pre-dump writes no pstree.img: its pagemaps are its stream images.
    for name, kinds in (("pre", ["pagemap-*.img"]), ("img", ["pstree.img"])):
        assert_encrypted(run, needles, kinds, name=name, skip_logs=True)
    run.restore()
    watched.write_text("y")
    assert wl.report() == "inotify OK"
