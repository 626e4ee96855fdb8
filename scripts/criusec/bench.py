#!/usr/bin/python3
"""make bench: plain CRIU vs criusec (--encrypt, signed, --compress), sizes
and times, and post-hoc protection, side by side.

Two workloads (WORKLOADS="random records"): one process holding MiB of
random memory, and one whose memory compresses like a real heap (log and
JSON records with varying fields, zeroed and random buffers: workload.c
"records").  For each size, repeated REPEAT times in rotating order: criu
dump and criu restore -d, plain, --encrypt (unsigned), --encrypt signed
(restored under --trust), --encrypt --compress (zstd, the default) and
--compress-alg lz4.  Then the plain image directory protected after the
fact: tar | age, and tar | zstd -1 | age.  Sizes: the image directories,
and the plain one through tar | zstd -1.  The crypto floor: the engine's
page cipher alone sealing that many MiB on the threads a dump uses
(criusec-bench-floor, $FLOOR); on the workload's own pages, the
compressing pipeline's floor (read, compress, seal) and restore's
(read back, check, decrypt, decompress into fresh memory, in one call)
beside a plain restore's copy of the same pages.  Frozen time:
stats-dump's frozen_time, how long the tasks were stopped.

The chain section (WORKLOADS has "churn"; issue 20, Documentation/mem-tracking.md):
a process of MiB of random memory that keeps rewriting CHURN per mille of
its pages a second (50: 5 %; half of the writes sweep a hot region, half
hit random pages: workloads/benchchurn.c), left running.  In each round,
plain and --encrypt --compress (CHAIN_MODES): one full dump, against the
chain pre-dump, pre-dump, dump (--track-mem, --prev-images-dir), CHAIN_GAP
seconds (1) between the end of one pass and the start of the next and
before the first (the churn of one gap: 5 % of the memory).  Per pass: its
frozen and wall time and the pages it wrote (stats-dump; pages dumped whole
because they were not tracked, if any); then the final dump's frozen time
over the full dump's, against the target 0.2x.  Then what tracking costs
the application: two processes alike at once over COST_WINDOWS windows of
COST_WINDOW ms, one of them (alternately) right after a pre-dump left it
tracked, each measuring itself, so that the machine's other work weighs on
both alike; twice: writing whole pages flat out (pages/s, the worst case),
and writing CHURN per mille of the pages a second (the same mix) with
useful work between the writes, a checksum of one hot page at a time,
single-threaded (ops/s: the application's throughput); per window also
each one's CPU time, its system part and its minor faults, beside the
faults expected (first writes since the pass), the CPU ms tracking took
and per fault, and the paced cost estimated from its faults and a fault's
cost flat out; target: at most 5 % less, per window, of the throughput,
per CPU second and for a process with a CPU of its own (met only where
the median and all but a quarter of the rounds are, and the rounds agree
within 10 points).  MEM_TRACKER=uffd
or soft-dirty forces criu's --mem-tracker.  Every chain ends with its
final dump (the tracked task killed): no tracking holder is left, and one
still running is killed and said so.  CHURN_SHARED=1 makes the churned
memory shared anonymous memory (MAP_SHARED), which is not tracked: each
pass compares it with its parent checkpoint page by page (written and
parent count its pages too).

The snapshot section (WORKLOADS=snapshot, not run by default; issue 21,
Documentation/cow-dump.md): criu dump --leave-running with --cow-dump (the
default) and with --no-cow-dump, plain, --encrypt and --encrypt --compress,
of a process of MiB of incompressible memory (workloads/cowsweep.c, two threads) in three
cases: at rest, writing SNAP_RATE per mille of its memory a second (50:
5 %), and writing it flat out; a fresh process for each dump, killed after
it.  Per row: frozen time (stats-dump), the dump's wall time, the pages
copied at a write fault (its log), and the writers' stalls during the dump
(the time on one page, the freeze included, as the workload measures it):
the median and the worst; then the issue's targets for --encrypt
--compress with --cow-dump: frozen at most 50 ms for 1 GiB, median stall
under 1 ms, worst under 50 ms.  The writers check that memory stays
consistent, and a dump that breaks it fails the bench.  SNAP_CHAIN=1
makes each dump the second pass of a chain: --track-mem over a pre-dump
taken CHAIN_GAP seconds before (a kubelet's periodic checkpoints).

BASE_CRIU=path adds the modes of BASE_MODES (default "enc zstd") run by
another build (the previous main, say) as "MODE@base", in the same
rotation, so that a regression shows beside the same run's noise.
THREADS="1" adds the modes of SCALE_MODES (default "enc zstd") with criu
held to one CPU (taskset), as "MODE/1cpu": the engine sizes its helpers by
the CPUs criu may use, so this is the pipeline with no helper.

Prints, per mode: medians with their spread (min-max; "!" where the slowest
run took over 1.5 times the fastest: a row to explain, not to trust), each
mode's extra time over plain beside the crypto floor, frozen time, then a
markdown summary.  A benchmark, not a test: nothing here passes or fails
on time.

    bench.py CRIU WORKLOAD_SRC [MiB ...]     (REPEAT=n, WORKLOADS=..., FLOOR=path,
                                              MODES=..., BASE_CRIU=path, THREADS=1,
                                              CHAIN_MODES, CHAIN_GAP, CHURN, COST_WINDOW,
                                              COST_WINDOWS, MEM_TRACKER, SNAP_RATE, SNAP_CHAIN)
"""
import atexit
import json
import math
import os
import pathlib
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def run(cmd, **kw):
    t = time.monotonic()
    subprocess.run(cmd, check=True, **kw)
    return time.monotonic() - t


def cpu_children():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cpu(cmd, **kw):
    """(wall seconds, CPU seconds of cmd and what it waited for): the CPU time
    says more than the wall time on a machine shared with other work."""
    c = cpu_children()
    wall = run(cmd, **kw)
    return wall, cpu_children() - c


def wait_for(path, pred, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = path.read_text()
            if pred(s):
                return s
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timeout waiting on {path}")


def gone(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{pid} did not go away")


class Bench:
    def __init__(self, criu, workload, work):
        self.criu, self.workload, self.work = criu, workload, work
        keys = work / "keys"
        subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(keys), "bench"], check=True,
                       capture_output=True)
        self.cert, self.key = keys / "bench-cert.pem", keys / "bench-key.pem"
        self.ckpt_ids = set()
        self.holders = {}  # {pid: token} of the tracking holders the chains left
        self.age_id = work / "age.key"
        subprocess.run(["age-keygen", "-o", str(self.age_id)], check=True, capture_output=True)
        self.age_rcpt = subprocess.run(["age-keygen", "-y", str(self.age_id)], check=True,
                                       capture_output=True, text=True).stdout.strip()

    def start(self, mib, workload="memory"):
        st = self.work / "memory.status"
        if st.exists():
            st.unlink()
        p = subprocess.Popen([self.workload, workload, str(st), str(mib)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(st, lambda s: "ready" in s)
        return p.pid

    def criu_run(self, criu, action, img, *args, cpus=None):
        pre = ["taskset", "-c", cpus] if cpus else []
        return run_cpu([*pre, criu, action, "-D", str(img), "-o", f"{action}.log", *args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mode_args(self, base):
        """criu dump's and restore's options for a mode's base name (plain, enc, sig, zstd, lz4)."""
        dump_args, restore_args = [], []
        if base != "plain":
            dump_args = ["--encrypt", "--tls-cert", str(self.cert)]
            restore_args = ["--tls-key", str(self.key)]
        if base == "sig":
            dump_args += ["--sign-key", str(self.key), "--sign-cert", str(self.cert)]
            restore_args += ["--trust", str(self.cert)]
        if base in ("zstd", "lz4"):
            dump_args += ["--compress", "--compress-alg", base]
        return dump_args, restore_args

    def keep_ckpt_id(self, img):
        """An encrypted dump leaves its chain key in root's keyring (criusec:<checkpoint id>, for
        a later dump over it): noted here, removed when the bench ends (only ours: other work on
        the machine may have chain keys of its own there)."""
        if (img / "cipher.img").exists():
            from pycriu import criusec
            self.ckpt_ids.add(criusec.Checkpoint(img, keys=str(self.key)).ckpt_id.hex())

    def cycle(self, mib, img, mode, workload):
        """mode: "plain", "enc" (unsigned), "sig" (signed, restored under
        --trust), "zstd" or "lz4" (--encrypt --compress, unsigned); "@base"
        after it: by BASE_CRIU; "/1cpu": criu on one CPU.
        {dump, restore: (wall s, CPU s); frozen: ms; size: bytes}"""
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        pid = self.start(mib, workload)
        base = mode.split("@")[0].split("/")[0]
        criu = os.environ["BASE_CRIU"] if "@base" in mode else self.criu
        cpus = "0" if mode.endswith("/1cpu") else None
        dump_args, restore_args = self.mode_args(base)
        # Start each timed step with no dirty pages of an earlier one to write back.
        os.sync()
        dump = self.criu_run(criu, "dump", img, "-t", str(pid), *dump_args, cpus=cpus)
        gone(pid)
        self.keep_ckpt_id(img)
        size = sum(p.stat().st_size for p in img.iterdir() if p.is_file() and not p.name.endswith(".log"))
        frozen = frozen_ms(img)
        os.sync()
        restore = self.criu_run(criu, "restore", img, "-d", *restore_args, cpus=cpus)
        os.kill(pid, signal.SIGKILL)
        gone(pid)
        return {"dump": dump, "restore": restore, "frozen": frozen, "size": size}

    def posthoc(self, img):
        """Seconds of tar | age and tar | zstd -1 | age of the plain images, and
        the bytes of tar | zstd -1."""
        out = self.work / "posthoc.out"
        tar = f"tar -C {img} --exclude='*.log' -cf - ."
        cmds = {
            "age": f"{tar} | age -r {self.age_rcpt} > {out}",
            "zstd-age": f"{tar} | zstd -1 -q | age -r {self.age_rcpt} > {out}",
        }
        times = {}
        for k, c in cmds.items():
            os.sync()
            times[k] = run(["bash", "-o", "pipefail", "-c", c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        zout = self.work / "plain.tar.zst"
        subprocess.run(["bash", "-o", "pipefail", "-c", f"{tar} | zstd -1 -q > {zout}"], check=True)
        times["zstd-size"] = zout.stat().st_size
        out.unlink()
        zout.unlink()
        return times

    def posthoc_of(self, mib, wl):
        """post-hoc protection of a fresh plain dump (its own, untimed)."""
        img = self.work / "posthoc-img"
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        pid = self.start(mib, "memory" if wl == "random" else wl)
        self.criu_run(self.criu, "dump", img, "-t", str(pid))
        gone(pid)
        t = self.posthoc(img)
        # The compressing pipeline's floor on this workload's own pages (the largest page image).
        pages = max(img.glob("pages-*.img"), key=lambda p: p.stat().st_size)
        # Restore's floor: those pages read back, checked and decompressed into fresh memory
        # (zstd-restore), against a plain restore's copy of them (copy)
        for alg in ("zstd", "lz4", "zstd-restore", "copy"):
            f = self.floor(mib, alg, pages)
            if f is not None:
                t["floor-" + alg] = f
        shutil.rmtree(img, ignore_errors=True)
        return t

    def floor(self, mib, alg="none", pages=None):
        """Milliseconds of the page cipher alone for mib MiB of random pages (alg none), or of the
        whole compressing pipeline on pages (a plain page image), or None without the tool."""
        tool = os.environ.get("FLOOR")
        if not tool or not os.path.exists(tool):
            return None
        cmd = [tool, str(mib), "5", alg] + ([str(pages)] if pages else [])
        return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    # --- the chain section (WORKLOADS has "churn")
    def churn_start(self, mib, *args, tag="churn"):
        """benchchurn MODE STATUS MIB ARGS...: (pid, status file) once its memory is filled."""
        st = self.work / f"{tag}.status"
        if st.exists():
            st.unlink()
        env = dict(os.environ, SHARED="1") if os.environ.get("CHURN_SHARED") else None
        p = subprocess.Popen([self.churn, args[0], str(st), str(mib), *map(str, args[1:])],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        wait_for(st, lambda s: "ready" in s, timeout=300)
        return p.pid, st

    def chain_pass(self, action, img, pid, args):
        """One pass: {frozen ms, wall ms, pages written, from the parent, dumped untracked}."""
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        try:
            wall, _ = self.criu_run(self.criu, action, img, "-t", str(pid), *args)
        except subprocess.CalledProcessError:
            log = (img / f"{action}.log").read_text(errors="replace").splitlines()
            print(f"bench: criu {action} failed; the end of its log:", *log[-15:], sep="\n", file=sys.stderr)
            raise
        st = dump_stats(img)
        self.keep_ckpt_id(img)
        # Shared memory (CHURN_SHARED) counts apart in stats-dump: compared with the parent, not tracked
        return {"frozen": st["frozen_time"] / 1000.0, "wall": wall * 1000,
                "written": st["pages_written"] + st.get("shpages_written", 0),
                "memdump": st.get("memdump_time", 0) / 1000.0, "memwrite": st.get("memwrite_time", 0) / 1000.0,
                "parent": st.get("pages_skipped_parent", 0) + st.get("shpages_skipped_parent", 0),
                "untracked": st.get("pages_untracked_task", 0) + st.get("pages_untracked_vma", 0)
                + st.get("pages_untracked_shmem", 0)}

    def churn_full(self, mib, mode, gap, churn):
        """One full dump of the churning process, gap seconds after it started churning."""
        pid, _ = self.churn_start(mib, "churn", churn)
        os.sync()
        time.sleep(gap)
        r = self.chain_pass("dump", self.work / "full", pid, self.mode_args(mode)[0])
        gone(pid)
        shutil.rmtree(self.work / "full", ignore_errors=True)
        return {"full": r}

    def churn_chain(self, mib, mode, gap, churn, tracker):
        """pre-dump, pre-dump, dump of the churning process, gap seconds between the end of one
        pass and the start of the next (and before the first): each pass's numbers, and the
        gaps as they were.  The final dump ends the chain (it kills the task)."""
        pid, _ = self.churn_start(mib, "churn", churn)
        dump_args = self.mode_args(mode)[0]
        if mode != "plain":
            # Each pass reads its parent with the chain key the last one left in root's keyring,
            # else with this key: other work on the machine (a test's clean-up) may remove keys.
            dump_args += ["--tls-key", str(self.key)]
        os.sync()
        time.sleep(gap)
        out, gaps, prev, end = {}, [], None, None
        try:
            for name, action in (("pre1", "pre-dump"), ("pre2", "pre-dump"), ("dump", "dump")):
                if end is not None:
                    time.sleep(max(0.0, gap - (time.monotonic() - end)))
                    gaps.append(time.monotonic() - end)
                parent = ["--prev-images-dir", f"../{prev}"] if prev else []
                out[name] = self.chain_pass(action, self.work / name, pid,
                                            ["--track-mem", *tracker, *parent, *dump_args])
                end, prev = time.monotonic(), name
                if action == "pre-dump":
                    self.holders.update(holders_of(pid))
            gone(pid)
        finally:
            if os.path.exists(f"/proc/{pid}"):  # a pass failed: the chain ends here
                os.kill(pid, signal.SIGKILL)
                gone(pid)
            for name in ("pre1", "pre2", "dump"):
                shutil.rmtree(self.work / name, ignore_errors=True)
        out["gaps"] = gaps
        return out

    def tracking_cost(self, mib, first, kind, args, tracker):
        """Two processes alike (benchchurn KIND ARGS...: "flat" WINDOW_MS WINDOWS, or "paced"
        PERMILLE WINDOW_MS WINDOWS), the first or the second of them (first) left tracked by a
        pre-dump, then both measuring themselves at once, so that the machine's other work weighs
        on both alike: {"tracked": [window, ...], "untracked": ...}, a window {rate: pages/s
        (flat) or ops/s (paced), cpu, sys: ms of CPU time, faults: minor faults, pages: written}.
        Both killed after (the holder goes with its task)."""
        procs, img = [], self.work / "cost"
        window, windows = args[-2:]
        try:
            for tag in ("cost-a", "cost-b"):
                procs.append(self.churn_start(mib, kind, *args, tag=tag))
            tracked = procs[0 if first else 1]
            shutil.rmtree(img, ignore_errors=True)
            img.mkdir()
            self.criu_run(self.criu, "pre-dump", img, "-t", str(tracked[0]), "--track-mem", *tracker)
            self.holders.update(holders_of(tracked[0]))
            for pid, _ in procs if first else procs[::-1]:
                os.kill(pid, signal.SIGUSR1)
            out = {}
            for pid, st in procs:
                s = wait_for(st, lambda s: f" {kind} " in s, timeout=60 + 2 * window * windows / 1000)
                windows_seen = s.split(f" {kind} ", 1)[1].split()
                out["tracked" if pid == tracked[0] else "untracked"] = [parse_window(w) for w in windows_seen]
            return out
        finally:
            for pid, _ in procs:
                os.kill(pid, signal.SIGKILL)
                gone(pid)
            shutil.rmtree(img, ignore_errors=True)


def parse_window(w):
    """benchchurn's RATE:CPU_US:SYS_US:MINFLT:PAGES of one window."""
    rate, cpu, sys_, faults, pages = w.split(":")
    return {"rate": float(rate), "cpu": int(cpu) / 1000.0, "sys": int(sys_) / 1000.0, "faults": int(faults),
            "pages": int(pages)}


HOLDER_DIR = pathlib.Path("/run/criu-mem-track")


def holders_of(pid, timeout=5):
    """{holder pid: token} of the memory tracking holders (criu __mem-track-holder) that track
    pid (a pidfd of it): the bench's own, not those of other work on the machine.  A pre-dump
    leaves one, which opens its pidfds once criu has gone: wait for it a little."""
    deadline = time.monotonic() + timeout
    while True:
        out = find_holders(pid)
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.02)


def find_holders(pid):
    out = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            if len(argv) < 5 or argv[1] != b"__mem-track-holder":
                continue
            for fd in (p / "fdinfo").iterdir():
                if f"Pid:\t{pid}\n" in fd.read_text():
                    out[int(p.name)] = argv[4].decode()
                    break
        except OSError:
            continue
    return out


def holder_alive(pid, token):
    """pid is still that holder (not a process that got its pid since)."""
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) > 4 and argv[1] == b"__mem-track-holder" and argv[4].decode() == token


def end_holders(mine, timeout=10):
    """The holders of mine ({pid: token}) exit once their tasks are gone: wait for that, then
    kill any left and remove its socket.  How many had to be killed."""
    deadline = time.monotonic() + timeout
    while any(holder_alive(p, t) for p, t in mine.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = 0
    for pid, token in mine.items():
        if holder_alive(pid, token):
            os.kill(pid, signal.SIGKILL)
            (HOLDER_DIR / token).unlink(missing_ok=True)
            killed += 1
    return killed


def mem_tracker(criu, tracker):
    """(mechanism criu uses for memory tracking, or None, what criu check said)."""
    r = subprocess.run([criu, "check", "--feature", "mem_dirty_track", *tracker], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    for ln in out.splitlines():
        if ln.startswith("Memory tracking:") and r.returncode == 0:
            return ln.split(":", 1)[1].strip(), out
    return None, out.splitlines()[-1] if out else f"criu check failed ({r.returncode})"


def dump_stats(img):
    from pycriu import images
    with open(img / "stats-dump", "rb") as f:
        return images.load(f)["entries"][0]["dump"]


def frozen_ms(img):
    """stats-dump's frozen_time (how long the tasks were stopped), in ms; stats are never encrypted."""
    from pycriu import images
    with open(img / "stats-dump", "rb") as f:
        return images.load(f)["entries"][0]["dump"]["frozen_time"] / 1000.0


def page_reporting():
    """A note when this guest hands freed memory back to its host (free page
    reporting): memory then costs a host fault at its next first touch, and
    a dump's page cache is fresh memory, so times split in two modes."""
    d = pathlib.Path("/sys/module/page_reporting/parameters")
    try:
        order = int((d / "page_reporting_order").read_text())
        kib = int((d / "reported_kib").read_text()) if (d / "reported_kib").exists() else None
    except (OSError, ValueError):
        return None
    return (f"this guest reports free memory of {4 << order >> 10 if order >= 8 else 4 << order} "
            f"{'MiB' if order >= 8 else 'KiB'} blocks to its host"
            + (f" ({kib >> 10} MiB so far)" if kib is not None else "") +
            ": memory freed and touched again is faulted in by the host, so times are bimodal; "
            "compare modes only within one run, by medians of alternating rounds")


def med(v):
    return statistics.median(v) if v else float("nan")


def spread(v):
    """'min-max', with '!' when the slowest took over 1.5x the fastest."""
    if not v:
        return ""
    lo, hi = min(v), max(v)
    return f"{lo * 1000:.0f}-{hi * 1000:.0f}{'!' if lo > 0 and hi / lo > 1.5 else ''}"


NAMES = {"plain": "plain", "enc": "enc", "sig": "sig", "zstd": "enc+zstd", "lz4": "enc+lz4"}


def name(mode):
    base = mode.split("@")[0].split("/")[0]
    return NAMES[base] + mode[len(base):]


def ms_spread(v):
    """'min-max' of values already in ms (or pages/s), '!' as spread() does."""
    if not v:
        return ""
    lo, hi = min(v), max(v)
    return f"{lo:.0f}-{hi:.0f}{'!' if lo > 0 and hi / lo > 1.5 else ''}"


def pct_spread(v):
    """'min..max' of percentages (which may be negative)."""
    return f"{min(v):.1f}..{max(v):.1f}" if v else ""


CHAIN_TARGET, COST_TARGET = 0.2, 5.0
COST_KINDS = ("flat", "paced")
COST_UNITS = {"flat": "flat out, pages/s", "paced": "{:g} %/s + checksums, ops/s"}


def cost_label(kind, churn):
    return "flat out" if kind == "flat" else f"{churn / 10:g} %/s"


def pair_str(v):
    """untracked/tracked"""
    return f"{v[0]:.0f}/{v[1]:.0f}"


def cost_verdict(pcts):
    """The target for one row of rounds.  met: the median and all but a quarter of the rounds (none
    of three) meet it, and the rounds agree within twice the target; NOT met: every round over, or
    the median over with the rounds agreeing so; else unclear, saying why (a spread wider than
    that says more of the machine's other work than of the tracking)."""
    m = med(pcts)
    if m != m:
        return "?"
    over = sum(p > COST_TARGET for p in pcts)
    width = max(pcts) - min(pcts)
    if over == len(pcts) or (m > COST_TARGET and width <= 2 * COST_TARGET):
        return "NOT met"
    if over > len(pcts) // 4:
        return f"unclear ({over} of {len(pcts)} over)"
    if width > 2 * COST_TARGET:
        return f"unclear (spread {width:.0f} points)"
    return "met"


def expected_faults(pages, hot, written):
    """Per window, the pages whose first write since the pass falls in it, from the pages written
    in each (half of them sweep the hot region, half hit pages at random): the hot pages reached
    for the first time, and the random writes' pages not written before, uniform over memory."""
    out, swept, rand = [], 0.0, 0.0
    for n in written:
        h = min(hot, swept + n / 2)
        new = h - swept + (pages - hot) * (math.exp(-rand / pages) - math.exp(-(rand + n / 2) / pages))
        swept, rand = h, rand + n / 2
        out.append(new)
    return out


def cost_windows(runs, kind, mib, churn, window, windows):
    """The rows of one kind of tracking cost (runs: tracking_cost()'s, a round each).  Per round:
    cost, 1 - tracked/untracked of the rates (the throughput, wall time: on a shared machine also
    the CPU share each got); cpu, the same of the rates per CPU second; extra, the CPU ms the
    tracked one spent beyond what its work took the untracked one; per fault, that over the faults
    it took more; own, what the tracking would cost a process with a CPU of its own: flat out, its
    faults come with its speed, so per cpu; paced, they come with the clock, so extra over the
    window."""
    pages = mib << 8
    hot = max(1, pages * (50 if kind == "flat" else churn) // 2000)
    expected = [expected_faults(pages, hot, [w["pages"] for w in r["tracked"]]) for r in runs]
    rows = []
    for w in range(windows):
        u = [r["untracked"][w] for r in runs]
        t = [r["tracked"][w] for r in runs]
        both = [(a, b) for a, b in zip(u, t) if a["rate"] and a["cpu"] and b["cpu"]]
        pcts = [100 * (1 - b["rate"] / a["rate"]) for a, b in both]
        cpcts = [100 * (1 - (b["rate"] / b["cpu"]) / (a["rate"] / a["cpu"])) for a, b in both]
        extra = [b["cpu"] * c / 100 for (a, b), c in zip(both, cpcts)]
        per_fault = [1000 * e / (b["faults"] - a["faults"]) for (a, b), e in zip(both, extra)
                     if b["faults"] > a["faults"]]
        own = cpcts if kind == "flat" else [100 * e / window for e in extra]

        def pair(key):
            return [med([x[key] for x in u]), med([x[key] for x in t])]

        rows.append({"window": w, "label": f"{w * window / 1000:g}-{(w + 1) * window / 1000:g} s",
                     "untracked": med([x["rate"] for x in u]), "uspread": ms_spread([x["rate"] for x in u]),
                     "tracked": med([x["rate"] for x in t]), "tspread": ms_spread([x["rate"] for x in t]),
                     "cost": med(pcts), "cspread": pct_spread(pcts), "costs": pcts, "verdict": cost_verdict(pcts),
                     "cpucost": med(cpcts), "cpuspread": pct_spread(cpcts), "cpucosts": cpcts,
                     "cpuverdict": cost_verdict(cpcts), "extra": med(extra), "espread": pct_spread(extra),
                     "per_fault": med(per_fault), "own": med(own), "ospread": pct_spread(own), "owns": own,
                     "ownverdict": cost_verdict(own), "cpu": pair("cpu"), "sys": pair("sys"),
                     "faults": pair("faults"), "expected": med([e[w] for e in expected]),
                     "pages": med([x["pages"] for x in t])})
    return rows


PASSES = (("full", "full dump"), ("pre1", "pre-dump 1"), ("pre2", "pre-dump 2"), ("dump", "dump"))


def churn_section(b, mib, repeat):
    """The chain and the tracking cost at mib MiB, repeat rounds in rotating order: printed,
    and returned for the summary (None where criu cannot track memory here)."""
    modes = (os.environ.get("CHAIN_MODES") or "plain zstd").split()
    gap = float(os.environ.get("CHAIN_GAP") or 1)
    churn = int(os.environ.get("CHURN") or 50)
    window = int(os.environ.get("COST_WINDOW") or 1000)
    windows = int(os.environ.get("COST_WINDOWS") or 3)
    tracker = [f"--mem-tracker={os.environ['MEM_TRACKER']}"] if os.environ.get("MEM_TRACKER") else []
    mech, why = mem_tracker(b.criu, tracker)
    if mech is None:
        print(f"\nchurn, {mib} MiB: skipped, criu cannot track memory on this kernel: {why}")
        return None
    items = [("full", m) for m in modes] + [("chain", m) for m in modes] + [("cost", k) for k in COST_KINDS]
    res = {m: {"full": [], "pre1": [], "pre2": [], "dump": [], "gaps": [], "ratio": []} for m in modes}
    cost = {k: [] for k in COST_KINDS}
    killed, b.holders = 0, {}
    load = os.getloadavg()[0]
    for i in range(repeat):
        full = {}
        for kind, m in items[i % len(items):] + items[:i % len(items)]:
            if kind == "full":
                full[m] = b.churn_full(mib, m, gap, churn)["full"]
                res[m]["full"].append(full[m])
            elif kind == "chain":
                r = b.churn_chain(mib, m, gap, churn, tracker)
                for k in ("pre1", "pre2", "dump"):
                    res[m][k].append(r[k])
                res[m]["gaps"] += r["gaps"]
            else:  # which of the two processes is tracked alternates from round to round
                args = (window, windows) if m == "flat" else (churn, window, windows)
                cost[m].append(b.tracking_cost(mib, i % 2 == 0, m, args, tracker))
            killed += end_holders(b.holders)
        for m in modes:  # this round's final dump over this round's full dump
            f = full[m]["frozen"]
            res[m]["ratio"].append(res[m]["dump"][-1]["frozen"] / f if f else float("nan"))
    gaps = [g for m in modes for g in res[m]["gaps"]]
    print(f"\nchurn, {mib} MiB (load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end): "
          f"{churn / 10:g} % of the pages rewritten a second (half sweeping a hot region of {churn / 20:g} %, "
          f"half random), left running; memory tracking: {mech}; passes {gap:g} s apart (end to start; "
          f"{min(gaps):.2f}-{max(gaps):.2f} s as run), the first {gap:g} s after the churn started")
    print(f"  {'mode':<9} {'pass':<11} {'frozen ms':>9} {'spread':>11} {'wall ms':>8} {'spread':>11} "
          f"{'written':>8} {'% of mem':>8} {'parent':>8} {'untracked':>9}")
    pages = mib << 8
    rows = []
    for m in modes:
        for k, label in PASSES:
            fr = [c["frozen"] for c in res[m][k]]
            wa = [c["wall"] for c in res[m][k]]
            row = {"mode": m, "pass": k, "frozen": med(fr), "fspread": ms_spread(fr), "wall": med(wa),
                   "wspread": ms_spread(wa), "written": med([c["written"] for c in res[m][k]]),
                   "parent": med([c["parent"] for c in res[m][k]]),
                   "memdump": med([c["memdump"] for c in res[m][k]]),
                   "memwrite": med([c["memwrite"] for c in res[m][k]]),
                   "untracked": med([c["untracked"] for c in res[m][k]])}
            rows.append(row)
            print(f"  {NAMES[m]:<9} {label:<11} {row['frozen']:9.0f} {row['fspread']:>11} {row['wall']:8.0f} "
                  f"{row['wspread']:>11} {row['written']:8.0f} {100 * row['written'] / pages:8.1f} "
                  f"{row['parent']:8.0f} {row['untracked']:9.0f}")
        r = res[m]["ratio"]
        ratio = med([c["frozen"] for c in res[m]["dump"]]) / med([c["frozen"] for c in res[m]["full"]])
        res[m]["xfull"] = ratio
        print(f"  {NAMES[m]:<9} final dump frozen / full dump frozen: {ratio:.2f}x (per round {min(r):.2f}-"
              f"{max(r):.2f}); target {CHAIN_TARGET}x{' (the enc+zstd row)' if m != 'zstd' else ''}: "
              f"{'met' if ratio <= CHAIN_TARGET else 'NOT met'}")
    print(f"  tracking cost: two processes alike at once, one of them (alternately) right after a pre-dump left it\n"
          f"  tracked, each measuring itself in {windows} windows of {window} ms.  flat out: whole pages written as "
          f"fast as it can\n"
          f"  (pages/s; the worst case).  {churn / 10:g} %/s: its pages rewritten at that rate (same mix) and, "
          f"between the writes,\n"
          f"  useful work: a checksum of one hot page at a time, single-threaded (ops/s, its throughput).  cost: "
          f"1 - tracked/untracked,\n"
          f"  per round.  target: met, the median and all but a quarter of the rounds at most {COST_TARGET:g} %, "
          f"the rounds within\n"
          f"  {2 * COST_TARGET:g} points of each other; NOT met, every round over, or the median over and the "
          f"rounds that close;\n"
          f"  else unclear, saying why.")
    print(f"  {'workload':<9} {'window':<9} {'untracked':>10} {'spread':>15} {'tracked':>10} {'spread':>15} "
          f"{'cost %':>7} {'spread':>13}  target {COST_TARGET:g} %")
    cw = {k: cost_windows(cost[k], k, mib, churn, window, windows) for k in COST_KINDS}
    for k in COST_KINDS:
        for w in cw[k]:
            print(f"  {cost_label(k, churn):<9} {w['label']:<9} {w['untracked']:10.0f} {w['uspread']:>15} "
                  f"{w['tracked']:10.0f} {w['tspread']:>15} {w['cost']:7.1f} {w['cspread']:>13}  {w['verdict']}")
    print("  Its CPU: per cpu, the cost of the rates per CPU second (the share of the CPU each got left out); "
          "cpu, sys:\n"
          "  CPU ms in the window, of it system (getrusage: /proc's utime+stime; the split is sampled at ticks), "
          "untracked/tracked;\n"
          "  faults: minor faults, untracked/tracked; expected: the tracked one's first writes since the pass "
          "(from its pages\n"
          "  written: the hot region once swept, random pages not written before); extra: the CPU ms the tracked "
          "one spent\n"
          "  beyond what its work took the other; us/fault: extra over the faults; own core: the cost to a process "
          "with a CPU\n"
          "  of its own (flat out: per cpu, its faults come with its speed; paced: extra over the window, its "
          "faults come with\n"
          "  the clock), with its target.")
    print(f"  {'workload':<9} {'window':<9} {'per cpu %':>9} {'spread':>13}  {'target':<7} {'cpu ms':>9} "
          f"{'sys ms':>7} {'faults':>13} {'expected':>8} {'extra ms':>8} {'spread':>13} {'us/fault':>8} "
          f"{'own core %':>10} {'spread':>13}  target {COST_TARGET:g} %")
    for k in COST_KINDS:
        for w in cw[k]:
            print(f"  {cost_label(k, churn):<9} {w['label']:<9} {w['cpucost']:9.1f} {w['cpuspread']:>13}  "
                  f"{w['cpuverdict'].split(' (')[0]:<7} {pair_str(w['cpu']):>9} {pair_str(w['sys']):>7} "
                  f"{pair_str(w['faults']):>13} {w['expected']:8.0f} {w['extra']:8.1f} {w['espread']:>13} "
                  f"{w['per_fault']:8.2f} {w['own']:10.1f} {w['ospread']:>13}  {w['ownverdict']}")
    # The paced rows' cost, from the faults they took and what a fault costs flat out, where
    # tens of thousands of them make the cost per fault stand out of the noise.
    us = cw["flat"][0]["per_fault"]
    estimate = [{"faults": w["faults"][1] - w["faults"][0], "us": us,
                 "ms": (w["faults"][1] - w["faults"][0]) * us / 1000} for w in cw["paced"]]
    for e in estimate:
        e["own"] = 100 * e["ms"] / window
    parts = [f"{w['label']}: {e['faults']:.0f} faults, {e['ms']:.1f} ms, {e['own']:.1f} % of a CPU of its own"
             for w, e in zip(cw["paced"], estimate)]
    print(f"  {cost_label('paced', churn)}, from the cost of a fault flat out in the first window ({us:.2f} us) "
          f"and its faults:\n  " + "; ".join(parts))
    for k in COST_KINDS:
        first, last = cw[k][0], cw[k][-1]
        print(f"  {cost_label(k, churn)}: cost in the first window (every page's first write after the pass "
              f"faults) {first['cost']:.1f} % (per round {first['cspread']}), in the last {last['cost']:.1f} %; "
              f"target at most {COST_TARGET:g} %: {first['verdict']}; per CPU second {first['cpucost']:.1f} % "
              f"({first['cpuspread']}): {first['cpuverdict']}; with a CPU of its own {first['own']:.1f} % "
              f"({first['ospread']}): {first['ownverdict']}")
    if killed:
        print(f"  note: {killed} tracking holder(s) outlived their task and were killed")
    left = sum(holder_alive(p, t) for p, t in b.holders.items())
    print(f"  tracking holders left running: {left} of the {len(b.holders)} that the passes left")
    sys.stdout.flush()
    return {"mib": mib, "mechanism": mech, "gap": gap, "churn": churn, "rows": rows,
            "xfull": {m: res[m]["xfull"] for m in modes}, "ratios": {m: res[m]["ratio"] for m in modes},
            "cost": cw, "cost_rounds": cost, "estimate": estimate, "window": window, "killed": killed,
            "holders": sorted(b.holders)}


def churn_summary(chains):
    print("\n| churn MiB | mode | pass | frozen ms | spread | wall ms | spread | pages written | % of memory | "
          "from parent | untracked |")
    print("|" + " --- |" * 11)
    for c in chains:
        for row in c["rows"]:
            print(f"| {c['mib']} | {NAMES[row['mode']]} | {dict(PASSES)[row['pass']]} | {row['frozen']:.0f} | "
                  f"{row['fspread']} | {row['wall']:.0f} | {row['wspread']} | {row['written']:.0f} | "
                  f"{100 * row['written'] / (c['mib'] << 8):.1f} | {row['parent']:.0f} | {row['untracked']:.0f} |")
            if row["pass"] == "dump":
                r = c["ratios"][row["mode"]]
                print(f"| {c['mib']} | {NAMES[row['mode']]} | dump / full dump, frozen | "
                      f"{c['xfull'][row['mode']]:.2f}x | {min(r):.2f}-{max(r):.2f}x | "
                      f"target {CHAIN_TARGET}x | | | | | |")
    print("\n| churn MiB | tracking cost | window | untracked /s | spread | tracked /s | spread | cost % | spread | "
          "target 5 % | per CPU s % | spread | target 5 % | with a CPU of its own % | spread | target 5 % |")
    print("|" + " --- |" * 16)
    for c in chains:
        for k in COST_KINDS:
            for w in c["cost"][k]:
                print(f"| {c['mib']} | {COST_UNITS[k].format(c['churn'] / 10)} | {w['label']} | {w['untracked']:.0f} | "
                      f"{w['uspread']} | {w['tracked']:.0f} | {w['tspread']} | {w['cost']:.1f} | {w['cspread']} | "
                      f"{w['verdict']} | {w['cpucost']:.1f} | {w['cpuspread']} | {w['cpuverdict']} | "
                      f"{w['own']:.1f} | {w['ospread']} | {w['ownverdict']} |")
    print("\n| churn MiB | paced, from the cost of a fault flat out | window | faults | us per fault | ms of CPU | "
          "% of a CPU of its own |")
    print("|" + " --- |" * 7)
    for c in chains:
        for w, e in zip(c["cost"]["paced"], c["estimate"]):
            print(f"| {c['mib']} | {COST_UNITS['paced'].format(c['churn'] / 10)} | {w['label']} | {e['faults']:.0f} | "
                  f"{e['us']:.2f} | {e['ms']:.1f} | {e['own']:.1f} |")
    print("\n| churn MiB | tracking cost | window | CPU ms untracked/tracked | of it system | "
          "faults untracked/tracked | faults expected | extra CPU ms | spread | us per fault |")
    print("|" + " --- |" * 10)
    for c in chains:
        for k in COST_KINDS:
            for w in c["cost"][k]:
                print(f"| {c['mib']} | {COST_UNITS[k].format(c['churn'] / 10)} | {w['label']} | {pair_str(w['cpu'])} | "
                      f"{pair_str(w['sys'])} | {pair_str(w['faults'])} | {w['expected']:.0f} | {w['extra']:.1f} | "
                      f"{w['espread']} | {w['per_fault']:.2f} |")


# --- the snapshot section (WORKLOADS=snapshot; issue 21, Documentation/cow-dump.md)
SNAP_CASES = (("rest", "at rest"), ("paced", "5 %/s"), ("flat", "flat out"))
SNAP_MODES = ("plain", "enc", "zstd")
SNAP_WRITERS = 2
SNAP_FROZEN_TARGET, SNAP_MEDIAN_TARGET, SNAP_WORST_TARGET = 50.0, 1.0, 50.0  # ms, for 1 GiB enc+zstd


def stall_hist(report):
    """{bucket: pages} of cowsweep's report (after its second '|'), and its longest stall since
    the previous report in ms."""
    tail = report.split("|")[2].split()
    return {int(b): int(n) for b, n in (x.split(":") for x in tail[1:])}, int(tail[0]) / 1000.0


def hist_median_ms(h):
    """The median of a quarter-octave histogram (bucket b: 2^(b/4) to 2^((b+1)/4) ns), as its
    bucket's geometric middle (so within 9 %), in ms; nan when empty."""
    total = sum(h.values())
    seen = 0
    for b in sorted(h):
        seen += h[b]
        if 2 * seen >= total and total:
            return 2 ** ((b + 0.5) / 4) / 1e6
    return float("nan")


def snap_spread(v, fmt="{:.0f}"):
    """'min-max' (nan left out), '!' as spread() does."""
    v = [x for x in v if x == x]
    if not v:
        return ""
    lo, hi = min(v), max(v)
    return f"{fmt.format(lo)}-{fmt.format(hi)}{'!' if lo > 0 and hi / lo > 1.5 else ''}"


class Sweeper:
    """cowsweep (workloads/cowsweep.c) in one of the cases, its reports on demand."""

    def __init__(self, b, mib, case):
        self.st = b.work / "cowsweep.status"
        self.st.unlink(missing_ok=True)
        mode = {"rest": "cowsweep-rest", "paced": "cowsweep-paced", "flat": "cowsweep"}[case]
        rate = [os.environ.get("SNAP_RATE") or "50"] if case == "paced" else []
        self.p = subprocess.Popen([b.cowsweep, mode, str(self.st), str(mib), str(SNAP_WRITERS), *rate],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, NOISE="1"), start_new_session=True)
        self.n = 0
        try:
            wait_for(self.st, lambda s: "ready" in s, timeout=300)
        except BaseException:
            self.kill()
            raise

    def report(self):
        """Its next report (the first ones of cowsweep's status line are numbered #1, #2, ...)."""
        self.n += 1
        os.kill(self.p.pid, signal.SIGUSR1)
        s = wait_for(self.st, lambda s: s.startswith(f"#{self.n} ") or "BAD" in s)
        if "cowsweep OK" not in s:
            raise RuntimeError(f"cowsweep: {s}")
        return s

    def kill(self):
        self.p.kill()
        self.p.wait()
        gone(self.p.pid)


def snapshot_run(b, mib, case, mode, cow):
    """One dump --leave-running of a fresh cowsweep: {frozen, wall: ms; copied: pages copied at a
    write fault; writes: pages written during the dump; median, worst: stall ms (nan at rest)}.
    SNAP_CHAIN=1: the dump is the second pass of a chain, --track-mem over a pre-dump taken a
    second (CHAIN_GAP) before."""
    img, pre = b.work / "snap-img", b.work / "snap-pre"
    chain = os.environ.get("SNAP_CHAIN") == "1"
    for d in (img, pre):
        shutil.rmtree(d, ignore_errors=True)
    img.mkdir()
    w = Sweeper(b, mib, case)
    try:
        time.sleep(0.3)  # the writers under way
        args = []
        if chain:
            pre.mkdir()
            b.criu_run(b.criu, "pre-dump", pre, "-t", str(w.p.pid), *b.mode_args(mode)[0])
            time.sleep(float(os.environ.get("CHAIN_GAP") or 1))
            args = ["--track-mem", "--prev-images-dir", "../" + pre.name]
        os.sync()
        before = stall_hist(w.report())[0]
        try:
            wall, _ = b.criu_run(b.criu, "dump", img, "-t", str(w.p.pid), "-v3", "--leave-running",
                                 "--cow-dump" if cow else "--no-cow-dump", *b.mode_args(mode)[0], *args)
        except subprocess.CalledProcessError:
            log = (img / "dump.log").read_text(errors="replace").splitlines()
            print("bench: criu dump failed; the end of its log:", *log[-15:], sep="\n", file=sys.stderr)
            raise
        after, worst = stall_hist(w.report())  # also: the writers' checks still hold
    finally:
        w.kill()
    for d in (img, pre) if chain else (img,):
        b.keep_ckpt_id(d)
    log = (img / "dump.log").read_text(errors="replace")
    m = re.search(r"(\d+) copied at a write fault", log)
    fb = re.search(r"the tasks stay frozen until their pages are written: (.*)", log) if cow else None
    if fb and fb.group(1) not in b.cow_fallbacks:
        b.cow_fallbacks.add(fb.group(1))
        print(f"note: --cow-dump fell back to a frozen dump: {fb.group(1)}", flush=True)
    window = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    window = {k: v for k, v in window.items() if v}
    writes = sum(window.values())
    res = {"frozen": frozen_ms(img), "wall": wall * 1000, "copied": int(m.group(1)) if m else 0, "writes": writes,
           "median": hist_median_ms(window) if writes else float("nan"),
           "worst": worst if case != "rest" else float("nan")}
    for d in (img, pre):
        shutil.rmtree(d, ignore_errors=True)
    return res


def snapshot_section(b, mib, repeat):
    """criu dump --leave-running with and without --cow-dump at mib MiB, each case and mode,
    repeat rounds in alternating order: printed, and returned for the summary."""
    combos = [(c, m) for c, _ in SNAP_CASES for m in SNAP_MODES]
    res = {(c, m, cow): [] for c, m in combos for cow in (False, True)}
    load = os.getloadavg()[0]
    for i in range(repeat):
        # Rotate the order, and swap which of each pair goes first, from one round to the next.
        k = i * len(combos) // max(repeat, 1)
        for c, m in combos[k:] + combos[:k]:
            for cow in ((False, True) if i % 2 == 0 else (True, False)):
                res[c, m, cow].append(snapshot_run(b, mib, c, m, cow))
    rate = float(os.environ.get("SNAP_RATE") or 50) / 10
    print(f"\nsnapshot, {mib} MiB of incompressible memory, {SNAP_WRITERS} writer threads (paced: {rate:g} % of "
          f"the memory a second), dump --leave-running"
          f"{' --track-mem over a pre-dump' if os.environ.get('SNAP_CHAIN') == '1' else ''} "
          f"(load average {load:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end)")
    print(f"  {'case':<9} {'mode':<9} {'cow':<4} {'frozen ms':>9} {'spread':>11} {'wall ms':>8} {'spread':>11} "
          f"{'copied':>7} {'writes':>8} {'median us':>9} {'spread':>13} {'worst ms':>8} {'spread':>13}")
    rows = []
    for c, label in SNAP_CASES:
        for m in SNAP_MODES:
            for cow in (False, True):
                runs = res[c, m, cow]
                col = {k: [r[k] for r in runs] for k in runs[0]}
                row = {"case": c, "mode": m, "cow": cow, **{k: med(v) for k, v in col.items()},
                       "fspread": snap_spread(col["frozen"]), "wspread": snap_spread(col["wall"]),
                       "mspread": snap_spread([x * 1000 for x in col["median"]], "{:.2f}"),
                       "xspread": snap_spread(col["worst"], "{:.1f}")}
                if c == "rest":
                    row["median"] = row["worst"] = float("nan")
                rows.append(row)
                print(f"  {label:<9} {NAMES[m]:<9} {'yes' if cow else 'no':<4} {row['frozen']:9.0f} "
                      f"{row['fspread']:>11} {row['wall']:8.0f} {row['wspread']:>11} {row['copied']:7.0f} "
                      f"{row['writes']:8.0f} {row['median'] * 1000:9.2f} {row['mspread']:>13} "
                      f"{row['worst']:8.1f} {row['xspread']:>13}".rstrip())
    verdicts = snapshot_verdicts(mib, rows)
    for v in verdicts:
        print("  " + v)
    sys.stdout.flush()
    return {"mib": mib, "writers": SNAP_WRITERS, "rate": rate, "rows": rows, "verdicts": verdicts}


def snapshot_verdicts(mib, rows):
    """The issue's target, for the enc+zstd copy-on-write rows: frozen at most 50 ms for 1 GiB,
    median stall under 1 ms and worst under 50 ms while writing."""
    out = []
    for row in rows:
        if row["mode"] != "zstd" or not row["cow"]:
            continue
        label = dict(SNAP_CASES)[row["case"]]
        ok = row["frozen"] <= SNAP_FROZEN_TARGET
        v = (f"enc+zstd, cow, {label}: frozen {row['frozen']:.0f} ms, target at most {SNAP_FROZEN_TARGET:.0f} ms"
             f"{'' if mib == 1024 else ' (for 1024 MiB)'}: {'met' if ok else 'NOT met'}")
        if row["case"] != "rest":
            ok = row["median"] < SNAP_MEDIAN_TARGET
            v += (f"; median stall {row['median'] * 1000:.2f} us, target under {SNAP_MEDIAN_TARGET:.0f} ms: "
                  f"{'met' if ok else 'NOT met'}")
            ok = row["worst"] < SNAP_WORST_TARGET
            v += (f"; worst stall {row['worst']:.1f} ms, target under {SNAP_WORST_TARGET:.0f} ms: "
                  f"{'met' if ok else 'NOT met'}")
        out.append(v)
    return out


def snapshot_summary(snaps):
    print("\n| snapshot MiB | case | mode | cow | frozen ms | spread | wall ms | spread | pages copied at a fault | "
          "pages written meanwhile | median stall us | spread | worst stall ms | spread |")
    print("|" + " --- |" * 14)
    for s in snaps:
        for row in s["rows"]:
            stall = ("", "", "", "")
            if row["case"] != "rest":
                stall = (f"{row['median'] * 1000:.2f}", row["mspread"], f"{row['worst']:.1f}", row["xspread"])
            print(f"| {s['mib']} | {dict(SNAP_CASES)[row['case']]} | {NAMES[row['mode']]} | "
                  f"{'yes' if row['cow'] else 'no'} | {row['frozen']:.0f} | {row['fspread']} | {row['wall']:.0f} | "
                  f"{row['wspread']} | {row['copied']:.0f} | {row['writes']:.0f} | {' | '.join(stall)} |")
        for v in s["verdicts"]:
            print(f"| {s['mib']} | target | {v} |" + " |" * 11)


def main():
    criu, src = sys.argv[1], sys.argv[2]
    sizes = [int(s) for s in sys.argv[3:]] or [256]
    repeat = int(os.environ.get("REPEAT", "5"))
    workloads = (os.environ.get("WORKLOADS") or "random records churn").split()
    modes = (os.environ.get("MODES") or "plain enc sig zstd lz4").split()
    if os.environ.get("BASE_CRIU"):
        modes += [m + "@base" for m in (os.environ.get("BASE_MODES") or "enc zstd").split()]
    if "1" in (os.environ.get("THREADS") or "").split():
        modes += [m + "/1cpu" for m in (os.environ.get("SCALE_MODES") or "enc zstd").split()]
    if os.geteuid() != 0:
        sys.exit("bench: needs root (criu dump/restore)")
    # pycriu of the build under test (stats-dump)
    sys.path.insert(0, str(pathlib.Path(criu).resolve().parents[1] / "lib"))
    # The host's criu config and default keys must not change what is measured.
    sys.path.insert(0, str(REPO / "test" / "criusec"))
    from hermetic import private_config_dirs
    private_config_dirs()
    summary, chains, snaps = [], [], []
    workers = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="criusec-bench-", dir=os.environ.get("BENCH_DIR") or None) as w:
        work = pathlib.Path(w)
        workload = str(work / "workload")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", workload, src], check=True)
        b = Bench(criu, workload, work)
        atexit.register(drop_chain_keys, b.ckpt_ids)
        if "snapshot" in workloads:
            b.cowsweep, b.cow_fallbacks = str(work / "cowsweep"), set()
            subprocess.run(["gcc", "-O2", "-pthread", "-o", b.cowsweep, str(pathlib.Path(src).parent / "cowsweep.c")],
                           check=True)
        if "churn" in workloads:
            b.churn = str(work / "benchchurn")
            subprocess.run(["gcc", "-O2", "-o", b.churn, str(pathlib.Path(src).parent / "benchchurn.c")], check=True)
        check = subprocess.run([criu, "check", "--feature", "criusec"], capture_output=True, text=True).stdout
        aead = [ln.split("AEAD ")[-1].split(",")[0] for ln in check.splitlines() if "AEAD " in ln]
        threads = [ln.split("pages on ")[-1].split()[0] for ln in check.splitlines() if "pages on " in ln]
        if threads:
            workers = threads[0]
        print(f"criusec bench: {repeat} alternating rounds per size, medians [min-max ms]; "
              f"AEAD {aead[0] if aead else '?'}; {os.cpu_count()} CPUs, criu's page workers {workers} "
              f"(1 in the /1cpu modes); load average {os.getloadavg()[0]:.2f} at the start")
        if os.environ.get("BASE_CRIU"):
            print(f"@base: {os.environ['BASE_CRIU']}")
        note = page_reporting()
        if note:
            print("note: " + note)
        for wl in workloads:
            for mib in sizes:
                if wl == "churn":
                    c = churn_section(b, mib, repeat)
                    if c:
                        chains.append(c)
                    continue
                if wl == "snapshot":
                    snaps.append(snapshot_section(b, mib, repeat))
                    continue
                r = {m: [] for m in modes}
                post = {"age": [], "zstd-age": [], "zstd-size": [], "floor-zstd": [], "floor-lz4": [],
                        "floor-zstd-restore": [], "floor-copy": []}
                for i in range(repeat):
                    # Rotate the order so that no mode always runs on a warmer cache.
                    for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                        r[mode].append(b.cycle(mib, work / "img", mode, "memory" if wl == "random" else wl))
                    if i < 3:
                        for k, t in b.posthoc_of(mib, wl).items():
                            post[k].append(t)
                floor = b.floor(mib)
                p = {k: med(v) for k, v in post.items()}
                print(f"\n{wl}, {mib} MiB (load average {os.getloadavg()[0]:.2f}); crypto floor "
                      f"{floor if floor is not None else float('nan'):.0f} ms; compressing pipeline's floor on "
                      f"these pages: zstd {p['floor-zstd']:.0f} ms, lz4 {p['floor-lz4']:.0f} ms; restore's, "
                      f"zstd {p['floor-zstd-restore']:.0f} ms against a plain copy's {p['floor-copy']:.0f} ms; "
                      f"plain images | zstd -1: {p['zstd-size'] / 2**20:.1f} MiB")
                print(f"  {'mode':<14} {'dump ms':>8} {'spread':>12} {'extra':>6} {'/floor':>6} {'frozen':>7} "
                      f"{'x plain':>7} {'restore':>8} {'spread':>12} {'extra':>6} {'MiB':>7} {'/zstd-1':>7} "
                      f"{'cpu s':>6}")
                pm = {k: med([c[k][0] for c in r["plain"]]) for k in ("dump", "restore")} if "plain" in r else {}
                pf = med([c["frozen"] for c in r["plain"]]) if "plain" in r else float("nan")
                rows = []
                for mode in modes:
                    d = [c["dump"][0] for c in r[mode]]
                    rs = [c["restore"][0] for c in r[mode]]
                    row = {"mode": mode, "dump": med(d), "dspread": spread(d), "restore": med(rs),
                           "rspread": spread(rs), "frozen": med([c["frozen"] for c in r[mode]]),
                           "size": med([c["size"] for c in r[mode]]), "cpu": med([c["dump"][1] for c in r[mode]])}
                    row["dextra"] = (row["dump"] - pm["dump"]) * 1000 if pm else float("nan")
                    row["rextra"] = (row["restore"] - pm["restore"]) * 1000 if pm else float("nan")
                    row["xfloor"] = row["dextra"] / floor if floor else float("nan")
                    row["xfrozen"] = row["frozen"] / pf if pf else float("nan")
                    row["xzstd"] = row["size"] / p["zstd-size"] if p["zstd-size"] else float("nan")
                    rows.append(row)
                    print(f"  {name(mode):<14} {row['dump'] * 1000:8.0f} {row['dspread']:>12} {row['dextra']:+6.0f} "
                          f"{row['xfloor']:6.2f} {row['frozen']:7.0f} {row['xfrozen']:7.2f} "
                          f"{row['restore'] * 1000:8.0f} {row['rspread']:>12} {row['rextra']:+6.0f} "
                          f"{row['size'] / 2**20:7.1f} {row['xzstd']:7.2f} {row['cpu']:6.2f}")
                if pm:
                    print(f"  post-hoc: plain dump then tar|age {pm['dump'] + p['age']:.2f} s, "
                          f"then tar|zstd -1|age {pm['dump'] + p['zstd-age']:.2f} s")
                sys.stdout.flush()
                summary.append((wl, mib, floor, rows, p, pm))
        if summary:
            print("\nenc: --encrypt, unsigned; sig: signed by the host (RSA-3072, PSS), restored under --trust;")
            print("enc+zstd, enc+lz4: --encrypt --compress [--compress-alg lz4], unsigned; @base: BASE_CRIU;")
            print("/1cpu: criu held to one CPU (no helper thread).  extra: over plain's median, ms; /floor: extra")
            print("dump time over the crypto floor (the page cipher alone, on criu's threads); frozen: stats-dump "
                  "frozen_time,")
            print("ms, with the compressing pipeline's floor on the floor row (read, compress, seal: no CRIU, "
                  "no disk);")
            print("cpu s: criu dump's CPU.\n")
            print("| workload | MiB | mode | dump ms | spread | extra | / floor | frozen ms | x plain | "
                  "restore ms | spread | extra | MiB | / zstd-1 | post-hoc s |")
            print("|" + " --- |" * 15)
            for wl, mib, floor, rows, p, pm in summary:
                for row in rows:
                    ph = ""
                    if row["mode"] == "plain" and pm:
                        ph = f"age {pm['dump'] + p['age']:.2f}, zstd+age {pm['dump'] + p['zstd-age']:.2f}"
                    print(f"| {wl} | {mib} | {name(row['mode'])} | {row['dump'] * 1000:.0f} | {row['dspread']} | "
                          f"{row['dextra']:+.0f} | {row['xfloor']:.2f} | {row['frozen']:.0f} | {row['xfrozen']:.2f} | "
                          f"{row['restore'] * 1000:.0f} | {row['rspread']} | {row['rextra']:+.0f} | "
                          f"{row['size'] / 2**20:.1f} | {row['xzstd']:.2f} | {ph} |")
                print(f"| {wl} | {mib} | floor | {floor if floor is not None else float('nan'):.0f} | | | | "
                      f"zstd {p['floor-zstd']:.0f}, lz4 {p['floor-lz4']:.0f} | | "
                      f"zstd {p['floor-zstd-restore']:.0f}, copy {p['floor-copy']:.0f} | | | "
                      f"{p['zstd-size'] / 2**20:.1f} (plain \\| zstd -1) | | |")
        if chains:
            print("\nchurn: pre-dump 1, pre-dump 2, dump: the chain (--track-mem, --prev-images-dir); full dump: one")
            print("dump of the same churning process; frozen: stats-dump frozen_time; wall: the criu command's;")
            print("written: pages written by the pass (stats-dump pages_written), parent: pages taken from the parent,")
            print("untracked: pages dumped whole because they were not tracked (pages_untracked_task + _vma).")
            print("Medians of the rounds, spread min-max ('!': the slowest over 1.5x the fastest).")
            churn_summary(chains)
        if snaps:
            print("\nsnapshot: criu dump --leave-running --[no-]cow-dump of cowsweep (workloads/cowsweep.c) at rest, "
                  "writing")
            print("5 % of its memory a second (SNAP_RATE per mille) or flat out; frozen: stats-dump frozen_time; "
                  "wall: the")
            print("criu command's; copied: pages copied at a write fault (the dump's log); stall: the time a writer "
                  "spent on")
            print("one page, the freeze included, over the pages written during the dump (median to 9 %, from "
                  "quarter-octave")
            print("buckets). Medians of the rounds, spread min-max ('!': the slowest over 1.5x the fastest).")
            snapshot_summary(snaps)
        drop_chain_keys(b.ckpt_ids)
        if os.environ.get("BENCH_JSON"):
            pathlib.Path(os.environ["BENCH_JSON"]).write_text(json.dumps(
                [{"workload": wl, "mib": mib, "floor": floor, "rows": rows} for wl, mib, floor, rows, _, _ in summary]
                + [{"workload": "churn", **c} for c in chains]
                + [{"workload": "snapshot", **c} for c in snaps]
                + [{"chain_keys_dropped": sorted(b.ckpt_ids)}], indent=1))


def drop_chain_keys(ids):
    """The chain keys of the bench's own encrypted dumps, out of root's keyring."""
    import chainkeys
    for serial, desc in chainkeys.chain_keys().items():
        if desc.split(":", 1)[1] in ids:
            chainkeys.unlink(serial)


if __name__ == "__main__":
    main()
