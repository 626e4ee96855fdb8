#!/usr/bin/python3
"""Frozen time of criu dump --leave-running with and without --cow-dump
(issue 21): plain, --encrypt, --encrypt --compress, for a process of MiB
of incompressible memory at rest and with two threads writing it flat out
(test/criusec/workloads/cowsweep.c).  Prints stats-dump's frozen_time, the
dump's wall time, the pages copied at a write fault, the longest time
a writing thread spent on one page (the freeze included), and how many
pages took long (of the last run).  A benchmark,
not a test: nothing here passes or fails on time.

    bench-cow.py CRIU [MiB ...]       (REPEAT=n, default 1)
"""
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "build" / "src" / "lib")]
MODES = {"plain": (), "enc": ("--encrypt",), "enc+zstd": ("--encrypt", "--compress")}


def frozen_ms(img):
    from pycriu import images
    with open(img / "stats-dump", "rb") as f:
        return images.load(f)["entries"][0]["dump"]["frozen_time"] / 1000.0


def wait_for(path, pred, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = path.read_text() if path.exists() else ""
        if pred(s):
            return s
        time.sleep(0.02)
    raise SystemExit(f"workload: no status in {timeout}s")


def one(criu, binary, w, mib, busy, mode, cow, cert):
    st = w / "status"
    st.unlink(missing_ok=True)
    wl = subprocess.Popen([binary, "cowsweep" if busy else "cowsweep-rest", str(st), str(mib), "2"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=dict(os.environ, NOISE="1"), start_new_session=True)
    try:
        wait_for(st, lambda s: "ready" in s)
        time.sleep(0.3)
        img = w / "img"
        subprocess.run(["rm", "-rf", str(img)], check=True)
        img.mkdir()
        args = [*MODES[mode], "--tls-cert", cert] if MODES[mode] else []
        t = time.monotonic()
        r = subprocess.run([criu, "dump", "-D", str(img), "-o", "dump.log", "-v4", "-t", str(wl.pid),
                            "--leave-running", *(["--cow-dump"] if cow else []), *args],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = (time.monotonic() - t) * 1000
        log = (img / "dump.log").read_text(errors="replace")
        if r.returncode:
            raise SystemExit(f"dump failed: {r.stderr}\n{log[-3000:]}")
        m = re.search(r"(\d+) copied at a write fault", log)
        os.kill(wl.pid, signal.SIGUSR1)
        rep = wait_for(st, lambda s: "cowsweep OK" in s)
        stall = int(rep.split()[3]) / 1000.0
        hist = rep.split("|")[1].split()
        return frozen_ms(img), wall, int(m.group(1)) if m else 0, stall, "/".join(hist)
    finally:
        wl.kill()
        wl.wait()


def main():
    criu = sys.argv[1]
    sizes = [int(x) for x in sys.argv[2:]] or [256]
    repeat = int(os.environ.get("REPEAT", "1"))
    with tempfile.TemporaryDirectory(prefix="criusec-bench-cow-") as w:
        w = pathlib.Path(w)
        binary = str(w / "cowsweep")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", binary, str(REPO / "test/criusec/workloads/cowsweep.c")],
                       check=True)
        subprocess.run([str(REPO / "pki" / "criusec-keygen"), str(w), "k"], check=True, capture_output=True)
        cert = str(w / "k-cert.pem")
        print("| MiB | writers | mode | cow | frozen ms | dump wall ms | pages copied at a fault | worst stall ms "
              "| pages taking 50-100us/0.1-1/1-10/10-100/>100 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for mib in sizes:
            for busy in (False, True):
                for mode in MODES:
                    for cow in (False, True):
                        runs = [one(criu, binary, w, mib, busy, mode, cow, cert) for _ in range(repeat)]
                        f, wall, faults, stall = (statistics.median(x) for x in zip(*[r[:4] for r in runs]))
                        hist = runs[-1][4] if busy else ""
                        print(f"| {mib} | {'flat out' if busy else 'at rest'} | {mode} | {'yes' if cow else 'no'} "
                              f"| {f:.0f} | {wall:.0f} | {faults:.0f} | {stall if busy else float('nan'):.1f} "
                              f"| {hist} |", flush=True)


if __name__ == "__main__":
    main()
