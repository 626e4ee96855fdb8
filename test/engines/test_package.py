"""The installed package (build/deb, installed by test-engines.sh over
Debian's criu): Debian's paths, the man pages, the documentation, and tools
that run from where Debian puts them.  The engines' tests use the same
installed /usr/sbin/criu through runc."""
import os
import subprocess

import pytest

MULTIARCH = "x86_64-linux-gnu"
PACKAGES = ("criu", "libcriu2", "libcriu-dev", "libcompel1", "libcompel-dev", "python3-pycriu")
# Debian's paths of criu 4.2.1 (as its split packages install them), and ours.
FILES = {
    "criu": ["/usr/sbin/criu", "/usr/bin/compel", "/usr/sbin/criusec-keygen", "/usr/sbin/criusec-archive",
             "/usr/libexec/criu/scripts/systemd-autofs-restart.sh",
             "/usr/share/man/man8/criu.8.gz", "/usr/share/man/man1/crit.1.gz",
             "/usr/share/man/man1/compel.1.gz", "/usr/share/man/man1/criu-ns.1.gz",
             "/usr/share/doc/criu/criusec.md.gz", "/usr/share/doc/criu/criusec-format.md.gz",
             "/usr/share/doc/criu/criusec-kubernetes.md.gz",
             "/usr/share/doc/criu/copyright"],
    "libcriu2": [f"/usr/lib/{MULTIARCH}/libcriu.so.2"],
    "libcriu-dev": ["/usr/include/criu/criu.h", f"/usr/lib/{MULTIARCH}/pkgconfig/criu.pc"],
    "libcompel1": [f"/usr/lib/{MULTIARCH}/libcompel.so.1", f"/usr/lib/{MULTIARCH}/compel/std.lib.a"],
    "libcompel-dev": ["/usr/include/compel/infect.h"],
    "python3-pycriu": ["/usr/bin/crit", "/usr/sbin/criu-ns",
                       "/usr/lib/python3/dist-packages/pycriu/criusec/__init__.py"],
}

pytestmark = pytest.mark.skipif(
    not os.environ.get("CRIUSEC_DEB_VERSION"),
    reason="checks the installed package: run by 'make test-engines', which installs build/deb")


def out(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_every_package_installed_at_our_version():
    want = os.environ["CRIUSEC_DEB_VERSION"]
    for p in PACKAGES:
        assert out("dpkg-query", "-W", "-f", "${Status} ${Version}", p) == \
            f"install ok installed {want}", p


@pytest.mark.parametrize("package", PACKAGES)
def test_files_where_debian_puts_them(package):
    listed = set(out("dpkg", "-L", package).split("\n"))
    for f in FILES[package]:
        assert f in listed and os.path.exists(f), f"{package}: {f}"


def test_criu_is_criusec_and_checks():
    assert "criusec" in out("/usr/sbin/criu", "--version")
    r = subprocess.run(["/usr/sbin/criu", "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Looks good" in r.stdout + r.stderr, r.stdout + r.stderr


def test_man_pages_found_by_man():
    if not os.path.exists("/usr/bin/man"):
        pytest.skip("needs man-db (man)")
    assert out("man", "-w", "8", "criu").strip() == "/usr/share/man/man8/criu.8.gz"
    assert out("man", "-w", "1", "crit").strip() == "/usr/share/man/man1/crit.1.gz"


def test_crit_and_pycriu_run_on_debians_python():
    assert "decode" in out("/usr/bin/crit", "--help")
    assert out("/usr/bin/python3", "-c", "import pycriu.criusec, pycriu.images; print('ok')") == "ok\n"


def test_compel_finds_its_plugins():
    # compel's plugin directory is compiled in: Debian's multiarch one.
    assert f"/usr/lib/{MULTIARCH}/compel" in out("/usr/bin/compel", "plugins")
