#!/usr/bin/python3
"""make bench: plain CRIU vs criusec, and post-hoc encryption, side by side.

For each size (MiB of random anonymous memory in one process), repeated
REPEAT times: criu dump and criu restore -d, plain, --encrypt (unsigned)
and --encrypt signed (restored under --trust), then the plain image
directory encrypted after the fact (tar | age, gpg, openssl), the way
checkpoints are usually protected today.  Prints medians and the ratios.
A benchmark, not a test: nothing here passes or fails on time.

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

    def cycle(self, mib, img, mode):
        """mode: "plain", "enc" (unsigned) or "sig" (signed, restored under --trust)."""
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        pid = self.start(mib)
        dump_args, restore_args = [], []
        if mode != "plain":
            dump_args = ["--encrypt", "--tls-cert", str(self.cert)]
            restore_args = ["--tls-key", str(self.key)]
        if mode == "sig":
            dump_args += ["--sign-key", str(self.key), "--sign-cert", str(self.cert)]
            restore_args += ["--trust", str(self.cert)]
        # Start each timed step with no dirty pages of an earlier one to write back.
        os.sync()
        dump = self.criu_run("dump", img, "-t", str(pid), *dump_args)
        gone(pid)
        os.sync()
        restore = self.criu_run("restore", img, "-d", *restore_args)
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
    # The host's criu config and default keys must not change what is measured.
    sys.path.insert(0, str(REPO / "test" / "criusec"))
    from hermetic import private_config_dirs
    private_config_dirs()
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
        hdr = (f"{'MiB':>6} {'dump':>7} {'dump-enc':>8} {'dump-sig':>8} {'ratio':>6} {'restore':>8} {'rst-enc':>8} "
               f"{'rst-sig':>8} {'ratio':>6} {'age':>6} {'gpg':>6} {'openssl':>7} {'dump+age/sig':>12}")
        print(hdr)
        modes = ("plain", "enc", "sig")
        for mib in sizes:
            r = {k: [] for k in ("d-plain", "d-enc", "d-sig", "r-plain", "r-enc", "r-sig", "age", "gpg", "openssl")}
            for i in range(repeat):
                # Rotate the order so that no mode always runs on a warmer cache.
                for mode in modes[i % 3:] + modes[:i % 3]:
                    d, rs = b.cycle(mib, work / mode, mode)
                    r["d-" + mode].append(d)
                    r["r-" + mode].append(rs)
                for k, t in b.posthoc(work / "plain").items():
                    r[k].append(t)
            m = {k: statistics.median(v) for k, v in r.items()}
            print(f"{mib:>6} {m['d-plain']:>7.3f} {m['d-enc']:>8.3f} {m['d-sig']:>8.3f} "
                  f"{m['d-sig'] / m['d-plain']:>5.2f}x {m['r-plain']:>8.3f} {m['r-enc']:>8.3f} {m['r-sig']:>8.3f} "
                  f"{m['r-sig'] / m['r-plain']:>5.2f}x {m['age']:>6.2f} {m['gpg']:>6.2f} {m['openssl']:>7.2f} "
                  f"{(m['d-plain'] + m['age']) / m['d-sig']:>11.2f}x")
            sys.stdout.flush()
        print("enc: --encrypt, unsigned; sig: --encrypt signed by the host (RSA-3072, PSS), restored under --trust.")
        print("ratio: criusec signed / plain CRIU (lower is better); dump+age/sig: plain dump then tar|age, "
              "against criusec's signed encrypted dump (higher means criusec is faster).")


if __name__ == "__main__":
    main()
