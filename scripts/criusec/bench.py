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
(criusec-bench-floor, $FLOOR).  Frozen time: stats-dump's frozen_time,
how long the tasks were stopped.

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
                                              MODES=..., BASE_CRIU=path, THREADS=1)
"""
import json
import os
import pathlib
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
        dump_args, restore_args = [], []
        if base != "plain":
            dump_args = ["--encrypt", "--tls-cert", str(self.cert)]
            restore_args = ["--tls-key", str(self.key)]
        if base == "sig":
            dump_args += ["--sign-key", str(self.key), "--sign-cert", str(self.cert)]
            restore_args += ["--trust", str(self.cert)]
        if base in ("zstd", "lz4"):
            dump_args += ["--compress", "--compress-alg", base]
        # Start each timed step with no dirty pages of an earlier one to write back.
        os.sync()
        dump = self.criu_run(criu, "dump", img, "-t", str(pid), *dump_args, cpus=cpus)
        gone(pid)
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
        for alg in ("zstd", "lz4"):
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


def main():
    criu, src = sys.argv[1], sys.argv[2]
    sizes = [int(s) for s in sys.argv[3:]] or [256]
    repeat = int(os.environ.get("REPEAT", "5"))
    workloads = (os.environ.get("WORKLOADS") or "random records").split()
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
    summary = []
    workers = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="criusec-bench-", dir=os.environ.get("BENCH_DIR") or None) as w:
        work = pathlib.Path(w)
        workload = str(work / "workload")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", workload, src], check=True)
        b = Bench(criu, workload, work)
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
                r = {m: [] for m in modes}
                post = {"age": [], "zstd-age": [], "zstd-size": [], "floor-zstd": [], "floor-lz4": []}
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
                      f"these pages: zstd {p['floor-zstd']:.0f} ms, lz4 {p['floor-lz4']:.0f} ms; "
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
        print("\nenc: --encrypt, unsigned; sig: signed by the host (RSA-3072, PSS), restored under --trust;")
        print("enc+zstd, enc+lz4: --encrypt --compress [--compress-alg lz4], unsigned; @base: BASE_CRIU;")
        print("/1cpu: criu held to one CPU (no helper thread).  extra: over plain's median, ms; /floor: extra")
        print("dump time over the crypto floor (the page cipher alone, on criu's threads); frozen: stats-dump frozen_time,")
        print("ms, with the compressing pipeline's floor on the floor row (read, compress, seal: no CRIU, no disk);")
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
                  f"zstd {p['floor-zstd']:.0f}, lz4 {p['floor-lz4']:.0f} | | | | | "
                  f"{p['zstd-size'] / 2**20:.1f} (plain \\| zstd -1) | | |")
        if os.environ.get("BENCH_JSON"):
            pathlib.Path(os.environ["BENCH_JSON"]).write_text(json.dumps(
                [{"workload": wl, "mib": mib, "floor": floor, "rows": rows} for wl, mib, floor, rows, _, _ in summary],
                indent=1))


if __name__ == "__main__":
    main()
