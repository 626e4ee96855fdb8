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
(criusec-bench-floor, $FLOOR).  Prints medians, each mode's extra time
over plain, and a markdown summary.  A benchmark, not a test: nothing
here passes or fails on time.

    bench.py CRIU WORKLOAD_SRC [MiB ...]     (REPEAT=n, WORKLOADS=..., FLOOR=path)
"""
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

    def criu_run(self, action, img, *args):
        return run_cpu([self.criu, action, "-D", str(img), "-o", f"{action}.log", *args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cycle(self, mib, img, mode, workload):
        """mode: "plain", "enc" (unsigned), "sig" (signed, restored under
        --trust), "zstd" or "lz4" (--encrypt --compress, unsigned).
        ((dump wall, CPU seconds), (restore wall, CPU seconds), bytes of the image directory)"""
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        pid = self.start(mib, workload)
        dump_args, restore_args = [], []
        if mode != "plain":
            dump_args = ["--encrypt", "--tls-cert", str(self.cert)]
            restore_args = ["--tls-key", str(self.key)]
        if mode == "sig":
            dump_args += ["--sign-key", str(self.key), "--sign-cert", str(self.cert)]
            restore_args += ["--trust", str(self.cert)]
        if mode in ("zstd", "lz4"):
            dump_args += ["--compress", "--compress-alg", mode]
        # Start each timed step with no dirty pages of an earlier one to write back.
        os.sync()
        dump = self.criu_run("dump", img, "-t", str(pid), *dump_args)
        gone(pid)
        size = sum(p.stat().st_size for p in img.iterdir() if p.is_file() and not p.name.endswith(".log"))
        os.sync()
        restore = self.criu_run("restore", img, "-d", *restore_args)
        os.kill(pid, signal.SIGKILL)
        gone(pid)
        return dump, restore, size

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

    def floor(self, mib):
        """Milliseconds of the page cipher alone for mib MiB, or None without the tool."""
        tool = os.environ.get("FLOOR")
        if not tool or not os.path.exists(tool):
            return None
        return float(subprocess.run([tool, str(mib)], check=True, capture_output=True, text=True).stdout)


MODES = ("plain", "enc", "sig", "zstd", "lz4")
NAMES = {"plain": "plain", "enc": "enc", "sig": "sig", "zstd": "enc+zstd", "lz4": "enc+lz4"}


def main():
    criu, src = sys.argv[1], sys.argv[2]
    sizes = [int(s) for s in sys.argv[3:]] or [256]
    repeat = int(os.environ.get("REPEAT", "3"))
    workloads = os.environ.get("WORKLOADS", "random records").split()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (criu dump/restore)")
    # The host's criu config and default keys must not change what is measured.
    sys.path.insert(0, str(REPO / "test" / "criusec"))
    from hermetic import private_config_dirs
    private_config_dirs()
    summary = []
    with tempfile.TemporaryDirectory(prefix="criusec-bench-", dir=os.environ.get("BENCH_DIR")) as w:
        work = pathlib.Path(w)
        workload = str(work / "workload")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", workload, src], check=True)
        b = Bench(criu, workload, work)
        check = subprocess.run([criu, "check", "--feature", "criusec"], capture_output=True, text=True).stdout
        aead = [ln.split("AEAD ")[-1] for ln in check.splitlines() if "AEAD " in ln]
        print(f"criusec bench: {repeat} runs per size, medians; AEAD {aead[0] if aead else '?'}; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start")
        for wl in workloads:
            for mib in sizes:
                r = {f"{x}-{m}": [] for x in ("d", "r", "s", "dc", "rc") for m in MODES}
                post = {"age": [], "zstd-age": [], "zstd-size": []}
                for i in range(repeat):
                    # Rotate the order so that no mode always runs on a warmer cache.
                    for mode in MODES[i % len(MODES):] + MODES[:i % len(MODES)]:
                        d, rs, size = b.cycle(mib, work / mode, mode, "memory" if wl == "random" else wl)
                        r["d-" + mode].append(d[0])
                        r["r-" + mode].append(rs[0])
                        r["dc-" + mode].append(d[1])
                        r["rc-" + mode].append(rs[1])
                        r["s-" + mode].append(size)
                    for k, t in b.posthoc(work / "plain").items():
                        post[k].append(t)
                m = {k: statistics.median(v) for k, v in r.items()}
                p = {k: statistics.median(v) for k, v in post.items()}
                floor = b.floor(mib)
                print(f"\n{wl}, {mib} MiB (load average {os.getloadavg()[0]:.2f})")
                print("  size MiB   " + "  ".join(f"{NAMES[k]} {m['s-' + k] / 2**20:.1f}" for k in MODES) +
                      f"  plain|zstd-1 {p['zstd-size'] / 2**20:.1f}")
                print(f"  vs zstd-1  enc+zstd {m['s-zstd'] / p['zstd-size']:.2f}x  enc+lz4 "
                      f"{m['s-lz4'] / p['zstd-size']:.2f}x")
                # (Restore's CPU time is not shown: the restored tasks read their pages themselves.)
                for x, what in (("d", "dump s    "), ("r", "restore s "), ("dc", "dump cpu s")):
                    print(f"  {what} " + "  ".join(
                        f"{NAMES[k]} {m[x + '-' + k]:.3f}" +
                        (f" ({(m[x + '-' + k] - m[x + '-plain']) * 1000:+.0f} ms)" if k != "plain" else "")
                        for k in MODES))
                print(f"  post-hoc s tar|age {p['age']:.2f}  tar|zstd -1|age {p['zstd-age']:.2f}  "
                      f"(plain dump then tar|zstd -1|age: {m['d-plain'] + p['zstd-age']:.2f})")
                if floor is not None:
                    print(f"  floor      page cipher alone {floor:.0f} ms; enc's extra dump time "
                          f"{(m['d-enc'] - m['d-plain']) * 1000:+.0f} ms = "
                          f"{(m['d-enc'] - m['d-plain']) * 1000 / floor:.2f}x the floor")
                sys.stdout.flush()
                summary.append((wl, mib, m, p, floor))
        print("\nenc: --encrypt, unsigned; sig: signed by the host (RSA-3072, PSS), restored under --trust;")
        print("enc+zstd, enc+lz4: --encrypt --compress [--compress-alg lz4], unsigned.")
        print("s: wall seconds; dump cpu: CPU seconds of criu dump (user + system, all its threads and children).\n")
        print("| workload | MiB | size plain | plain+zstd-1 | enc | enc+zstd | enc+lz4 | enc+zstd / zstd-1 | "
              "dump plain | enc | sig | enc+zstd | enc+lz4 | restore plain | enc | sig | enc+zstd | enc+lz4 | "
              "dump+zstd+age | floor ms | dump cpu plain | enc | enc+zstd | enc+lz4 |")
        print("|" + " --- |" * 24)
        for wl, mib, m, p, floor in summary:
            mb = [f"{m['s-' + k] / 2**20:.1f}" for k in MODES if k != "sig"]
            print(f"| {wl} | {mib} | {mb[0]} | {p['zstd-size'] / 2**20:.1f} | {mb[1]} | {mb[2]} | {mb[3]} | "
                  f"{m['s-zstd'] / p['zstd-size']:.2f}x | " +
                  " | ".join(f"{m['d-' + k]:.3f}" for k in MODES) + " | " +
                  " | ".join(f"{m['r-' + k]:.3f}" for k in MODES) +
                  f" | {m['d-plain'] + p['zstd-age']:.2f} | {floor if floor is not None else float('nan'):.0f} | " +
                  " | ".join(f"{m['dc-' + k]:.2f}" for k in ("plain", "enc", "zstd", "lz4")) + " |")


if __name__ == "__main__":
    main()
