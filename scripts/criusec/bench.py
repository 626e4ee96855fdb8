#!/usr/bin/python3
"""make bench: plain CRIU vs criusec, and post-hoc encryption, side by side.

For each size (MiB of random anonymous memory in one process), repeated
REPEAT times: criu dump and criu restore -d, plain and --encrypt, then the
plain image directory encrypted after the fact (tar | age, gpg, openssl),
the way checkpoints are usually protected today.  Prints medians and the
ratios.  A benchmark, not a test: nothing here passes or fails on time.

    bench.py CRIU WORKLOAD_SRC [MiB ...]     (REPEAT=n in the environment)
"""
import os
import pathlib
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

    def start(self, mib):
        st = self.work / "memory.status"
        if st.exists():
            st.unlink()
        p = subprocess.Popen([self.workload, "memory", str(st), str(mib)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(st, lambda s: "ready" in s)
        return p.pid

    def criu_run(self, action, img, *args):
        return run([self.criu, action, "-D", str(img), "-o", f"{action}.log", *args],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cycle(self, mib, img, enc):
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        pid = self.start(mib)
        # Start each timed step with no dirty pages of an earlier one to write back.
        os.sync()
        dump = self.criu_run("dump", img, "-t", str(pid), *(["--encrypt", "--tls-cert", str(self.cert)] if enc else []))
        gone(pid)
        os.sync()
        restore = self.criu_run("restore", img, "-d", *(["--tls-key", str(self.key)] if enc else []))
        os.kill(pid, signal.SIGKILL)
        gone(pid)
        return dump, restore

    def posthoc(self, img):
        out = self.work / "posthoc.out"
        tar = f"tar -C {img} -cf - ."
        cmds = {
            "age": f"{tar} | age -r {self.age_rcpt} > {out}",
            "gpg": f"{tar} | gpg --batch --yes --pinentry-mode loopback --passphrase bench --symmetric "
                   f"--cipher-algo AES256 --compress-algo none -o {out}",
            "openssl": f"{tar} | openssl enc -aes-256-ctr -pbkdf2 -pass pass:bench -out {out}",
        }
        os.sync()
        times = {k: run(["bash", "-o", "pipefail", "-c", c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env=dict(os.environ, GNUPGHOME=str(self.work / "gnupg")))
                 for k, c in cmds.items()}
        out.unlink()
        return times


def main():
    criu, src = sys.argv[1], sys.argv[2]
    sizes = [int(s) for s in sys.argv[3:]] or [256]
    repeat = int(os.environ.get("REPEAT", "3"))
    if os.geteuid() != 0:
        sys.exit("bench: needs root (criu dump/restore)")
    with tempfile.TemporaryDirectory(prefix="criusec-bench-", dir=os.environ.get("BENCH_DIR")) as w:
        work = pathlib.Path(w)
        (work / "gnupg").mkdir(mode=0o700)
        workload = str(work / "workload")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", workload, src], check=True)
        b = Bench(criu, workload, work)
        check = subprocess.run([criu, "check", "--feature", "criusec"], capture_output=True, text=True).stdout
        aead = [ln.split("AEAD ")[-1] for ln in check.splitlines() if "AEAD " in ln]
        print(f"criusec bench: {repeat} runs per size, medians in seconds; AEAD {aead[0] if aead else '?'}; "
              f"{os.cpu_count()} CPUs")
        hdr = (f"{'MiB':>6} {'dump':>7} {'dump-enc':>8} {'ratio':>6} {'restore':>8} {'rst-enc':>8} {'ratio':>6} "
               f"{'age':>6} {'gpg':>6} {'openssl':>7} {'dump+age/enc':>12}")
        print(hdr)
        for mib in sizes:
            r = {k: [] for k in ("d", "de", "r", "re", "age", "gpg", "openssl")}
            for _ in range(repeat):
                # Alternate the order so that neither side always runs on a warmer cache.
                for enc in (False, True) if _ % 2 == 0 else (True, False):
                    d, rs = b.cycle(mib, work / ("enc" if enc else "plain"), enc)
                    r["de" if enc else "d"].append(d)
                    r["re" if enc else "r"].append(rs)
                for k, t in b.posthoc(work / "plain").items():
                    r[k].append(t)
            m = {k: statistics.median(v) for k, v in r.items()}
            print(f"{mib:>6} {m['d']:>7.3f} {m['de']:>8.3f} {m['de'] / m['d']:>5.2f}x {m['r']:>8.3f} "
                  f"{m['re']:>8.3f} {m['re'] / m['r']:>5.2f}x {m['age']:>6.2f} {m['gpg']:>6.2f} "
                  f"{m['openssl']:>7.2f} {(m['d'] + m['age']) / m['de']:>11.2f}x")
            sys.stdout.flush()
        print("ratio: criusec / plain CRIU (lower is better); dump+age/enc: plain dump then tar|age, "
              "against criusec's encrypted dump (higher means criusec is faster).")


if __name__ == "__main__":
    main()
