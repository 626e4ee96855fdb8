"""criu(8) and crit(1) as installed: built from the tree's asciidoc sources,
rendered with man -l, and documenting every criusec option the programs
accept (read from criu --help and crit's own --help, so an option added
later without its entry fails here), each config line and file."""
import os
import re
import shutil
import subprocess

import pytest
from helpers import CRIU, REPO


SRC = REPO / "build" / "src"
DOC = SRC / "Documentation"


def rendered(page):
    if not shutil.which("man"):
        pytest.skip("no man (man-db) to render the pages")
    if not (shutil.which("asciidoctor") or (shutil.which("asciidoc") and shutil.which("xmlto"))):
        pytest.skip("neither asciidoctor nor asciidoc and xmlto: the pages cannot be built")
    r = subprocess.run(["make", "-s", "-C", str(DOC), page], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building {page}: {r.stdout}{r.stderr}"
    env = dict(os.environ, MANWIDTH="300", MAN_KEEP_FORMATTING="")
    r = subprocess.run(["man", "--no-hyphenation", "--no-justification", "-l", str(DOC / page)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout, f"man -l {page}: {r.stderr}"
    return r.stdout


def section(text, title, until):
    start = text.index(title)
    return text[start:text.index(until, start)]


def entries(text):
    """The options that head an entry of a rendered list ('   --opt arg')."""
    return set(re.findall(r"^\s+(--[a-z][a-z-]*)(?=[\s,]|$)", text, re.M))


def test_criu_8_documents_every_criusec_option_config_line_and_file():
    page = rendered("criu.8")
    sec = section(page, "ENCRYPTION AND SIGNING (CRIUSEC)", "CONFIGURATION FILES")
    help_text = subprocess.run([CRIU, "--help"], capture_output=True, text=True, timeout=60).stdout
    criusec_help = help_text[help_text.index("Encryption (criusec):"):]
    criusec_help = criusec_help[:criusec_help.index("\n\n")]
    accepted = set(re.findall(r"^\s+(--[a-z][a-z-]*)", criusec_help, re.M))
    # --tls-cert and --tls-key are listed among the TLS options but are criusec's too.
    wanted = accepted | {"--tls-cert", "--tls-key"}
    assert {"--encrypt", "--encrypt-aead", "--sign-key", "--sign-cert", "--trust", "--max-age"} <= accepted
    missing = wanted - entries(sec)
    assert not missing, f"criu(8) has no criusec entry for {sorted(missing)}"
    flat = " ".join(sec.split())
    for opt in wanted:
        line = opt[2:]
        assert f"Config: {line}" in flat, f"criu(8) does not give the config line of {opt}"
    for f in ("/etc/criu/encryption-required", "/etc/criu/trusted-signers.pem", "/etc/pki/criu/cert.pem",
              "/etc/pki/criu/private/key.pem", "/etc/criu/default.conf"):
        assert f in flat, f"criu(8) does not mention {f}"
    for rpc in ("encrypt_aead", "encrypt_certs", "sign_key", "sign_cert", "max_age", "cr_errmsg", "syslog"):
        assert rpc in flat, f"criu(8) does not mention {rpc}"


def crit_options(cmd):
    env = dict(os.environ, PYTHONPATH=f"{SRC / 'lib'}:{SRC / 'crit'}")
    r = subprocess.run(["/usr/bin/python3", "-m", "crit", cmd, "--help"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"(--[a-z][a-z-]+)", r.stdout)) - {"--help"}


def test_crit_1_documents_its_key_and_trust_options_and_info_dir():
    page = rendered("crit.1")
    flat = " ".join(page.split())
    documented = set(re.findall(r"(--[a-z][a-z-]+)", page))
    for cmd in ("decode", "encode", "info", "x", "show"):
        missing = crit_options(cmd) - documented
        assert not missing, f"crit(1) does not document crit {cmd} {sorted(missing)}"
    for opt in ("--tls-key", "--trust", "--sign-key", "--sign-cert"):
        assert re.search(rf"^\s+(--[a-z-]+ file, )?{opt} file", page, re.M), f"crit(1) has no entry for {opt}"
    assert "crit info DIR" in flat and "/etc/criu/trusted-signers.pem" in flat
    assert "/etc/pki/criu/private/key.pem" in flat and "/etc/criu/encryption-required" in flat
