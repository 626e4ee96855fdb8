"""CRIU plugins' own image files under --encrypt (issue 23).

A plugin such as amdgpu writes image files of its own.  workloads/plugin.c
is a small plugin that does the same, with a canary: written while the
tasks are frozen, read back after the restored tasks were forked and
before any runs.  Written with a raw openat() in the images directory (as
amdgpu did), an encrypted dump must fail naming the file, with the task
still running; written through criu_image_open(), it is encrypted, listed
in the manifest, refused when altered, and handed back at restore."""
import os
import pathlib
import shutil
import subprocess

import pytest
from helpers import CRIU, MAGIC, damaged_copy, files_with, new_canary, wait_gone


HERE = pathlib.Path(__file__).resolve().parent
PLUGIN_H = pathlib.Path(CRIU).resolve().parent / "include" / "criu-plugin.h"


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory):
    """The test plugin, built against the criu under test's criu-plugin.h."""
    if not PLUGIN_H.exists():
        pytest.skip(f"needs criu's source tree beside {CRIU} ({PLUGIN_H}) to build a plugin")
    if "criu_image_open" not in PLUGIN_H.read_text():
        pytest.skip(f"{PLUGIN_H} has no criu_image_open(): not a criusec criu")
    d = tmp_path_factory.mktemp("plugins")
    # Only the header, as installed (criu/include has a string.h of its own).
    inc = tmp_path_factory.mktemp("include")
    shutil.copy(PLUGIN_H, inc)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-fPIC", "-shared", "-I", str(inc),
                    "-o", str(d / "criusec_testplugin.so"), str(HERE / "workloads" / "plugin.c")],
                   check=True)
    return d


@pytest.fixture
def plugin(plugin_dir, tmp_path, monkeypatch):
    """Configure the plugin (through criu's environment): returns (canary, out file)."""
    def setup(mode):
        canary = new_canary()
        out = tmp_path / f"plugin-{mode}.out"
        monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_MODE", mode)
        monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_DATA", canary)
        monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_OUT", str(out))
        return canary, out
    return setup


def libdir(plugin_dir):
    return ["--libdir", str(plugin_dir)]


def enc(keys):
    return ["--encrypt", "--tls-cert", keys["alice"][0]]


def out_lines(out):
    return out.read_text().splitlines() if out.exists() else []


def plugin_image(img):
    found = sorted(p for p in img.iterdir() if p.name.startswith("testplugin-") and p.name != "testplugin-dup.img")
    assert len(found) == 1, f"plugin images: {found}"
    return found[0]


def test_raw_plugin_plain_dump_unaffected(workloads, criu, tmp_path, plugin, plugin_dir):
    """Without --encrypt, a plugin writing with openat() works as upstream."""
    canary, out = plugin("raw")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, *libdir(plugin_dir))
    assert canary.encode() in plugin_image(img).read_bytes()
    criu.restore(img, *libdir(plugin_dir))
    assert wl.report() == "secrets OK"
    assert f"read testplugin-{wl.pid}.img {canary}" in out_lines(out)


def test_raw_plugin_fails_encrypted_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys):
    """A plugin that writes around criusec: the dump fails, one line naming the
    file and the plugin, and the task runs on, dumpable again."""
    canary, out = plugin("raw")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    r = criu.dump(wl, img, *libdir(plugin_dir), *enc(keys), check=False)
    assert r.returncode != 0, "an encrypted dump left a plugin's file in clear and succeeded"
    log = (img / "dump.log").read_text()
    name = f"testplugin-{wl.pid}.img"
    errors = [ln for ln in log.splitlines() if "Error" in ln and name in ln]
    assert len(errors) == 1, log[-3000:]
    assert "outside criusec" in errors[0] and "criusec_testplugin" in errors[0], errors[0]
    assert "criu_image_open()" in errors[0]
    # The checkpoint is not one: no cipher.img was written, so nothing restores from it.
    assert not (img / "cipher.img").exists()
    # The task was thawed and is as it was.
    assert wl.report() == "secrets OK"
    # A later dump of it (plugin through the API) succeeds and restores.
    canary2, out2 = plugin("api")
    img2 = tmp_path / "img2"
    criu.dump(wl, img2, *libdir(plugin_dir), *enc(keys))
    criu.restore(img2, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    assert f"read testplugin-{wl.pid}.img {canary2}" in out_lines(out2)


def test_raw_plugin_file_of_any_name_fails_encrypted_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys,
                                                         monkeypatch):
    """With a plugin loaded, any file it writes around criusec fails the dump,
    whatever its name (a log excepted)."""
    canary, _ = plugin("raw")
    monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_SUFFIX", ".bin")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    r = criu.dump(wl, img, *libdir(plugin_dir), *enc(keys), check=False)
    assert r.returncode != 0
    assert (f"testplugin-{wl.pid}.bin was written into the images directory outside criusec, in clear (plugins "
            "loaded: criusec_testplugin)") in (img / "dump.log").read_text()
    assert wl.report() == "secrets OK"


def test_other_process_log_in_images_dir_kept(workloads, criu, tmp_path, keys):
    """Without plugins, a file of no image name that another process writes
    into the images directory during the dump (a page server's log, with
    ZDTM's --page-server) does not fail it."""
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    img.mkdir()
    writer = subprocess.Popen(["sh", "-c", f"while :; do date >> {img}/page-server.log; "
                               f"date > {img}/other.pid; sleep 0.01; done"])
    try:
        criu.dump(wl, img, *enc(keys))
    finally:
        writer.kill()
        writer.wait()
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_unclosed_api_image_fails_encrypted_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys):
    """An image opened with criu_image_open() and never closed was never
    sealed: the dump fails naming it, and the task runs on."""
    canary, _ = plugin("leak")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    r = criu.dump(wl, img, *libdir(plugin_dir), *enc(keys), check=False)
    assert r.returncode != 0
    log = (img / "dump.log").read_text()
    assert f"testplugin-{wl.pid}.img: a plugin opened it with criu_image_open() but never closed it" in log
    assert files_with(img, canary.encode()) == []
    assert wl.report() == "secrets OK"


@pytest.mark.parametrize("how", ["raw", "api"])
def test_plugin_exit_writing_fails_encrypted_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys, how):
    """A plugin's exit hook runs after the manifest was sealed: a file it
    writes then (raw), or asks criu for (api, refused), fails the dump,
    cipher.img goes, and the task runs on."""
    canary, out = plugin(f"fini-{how}")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    r = criu.dump(wl, img, *libdir(plugin_dir), *enc(keys), check=False)
    assert r.returncode != 0, "the dump succeeded with a plugin writing as it exited"
    log = (img / "dump.log").read_text()
    if how == "raw":
        assert ("testplugin-exit.img was written into the images directory after the encrypted dump was sealed, "
                "in clear (plugins loaded: criusec_testplugin)") in log, log[-3000:]
        assert "exit-open testplugin-exit.img ok" in out_lines(out)
    else:
        assert "testplugin-exit.img: the encrypted dump is already sealed" in log, log[-3000:]
        assert "exit-open testplugin-exit.img Operation not permitted" in out_lines(out)
        assert not (img / "testplugin-exit.img").exists()
    assert not (img / "cipher.img").exists()
    assert wl.report() == "secrets OK"


def test_post_dump_script_files_are_not_a_plugins(workloads, criu, tmp_path, plugin, plugin_dir, keys):
    """A post-dump action script that writes into the images directory (after
    the seal, before the plugins exit) does not fail the dump."""
    plugin("api")
    script = tmp_path / "post-dump.sh"
    script.write_text('#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && echo done > "$CRTOOLS_IMAGE_DIR/marker"\n'
                      'exit 0\n')
    script.chmod(0o755)
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, *libdir(plugin_dir), *enc(keys), "--action-script", script)
    assert (img / "marker").read_text() == "done\n"
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


@pytest.fixture
def api_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys):
    canary, out = plugin("api")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, *libdir(plugin_dir), *enc(keys))
    return wl, img, canary, out


def test_api_plugin_encrypted(api_dump, criu, plugin_dir, keys):
    """Through criu_image_open(): in no file in clear, an encrypted stream of
    the manifest's, and the plugin gets its data back before any task runs."""
    wl, img, canary, out = api_dump
    p = plugin_image(img)
    assert p.name == f"testplugin-{wl.pid}.img"
    assert p.read_bytes()[:8] == MAGIC
    assert (p.stat().st_mode & 0o077) == 0
    assert files_with(img, canary.encode()) == []
    assert f"wrote {p.name} " in out_lines(out)
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    lines = out_lines(out)
    assert f"read {p.name} {canary}" in lines, lines
    assert "absent testplugin-none.img ENOENT" in lines, lines
    log = (img / "restore.log").read_text()
    assert f"{p.name}: handed to the plugin, authenticated" in log
    # criu's image names are refused to plugins; a second write of one image too
    assert "reserved core-1.img Invalid argument" in lines, lines
    assert "again testplugin-dup.img File exists" in lines, lines
    assert "read testplugin-dup.img x" in lines, lines


def test_api_plugin_listed_for_crit(api_dump, keys):
    """pycriu reads the manifest with the plugin's image in it (kind "plugin")."""
    wl, img, canary, _ = api_dump
    r = subprocess.run(["/usr/bin/python3", "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]); from pycriu import criusec; "
        "ck = criusec.Checkpoint(sys.argv[2], keys=sys.argv[3]); "
        "print(ck.verify() > 0); print(ck.kind_of(sys.argv[4])); "
        "print(ck.read(sys.argv[4]).decode())"),
        str(pathlib.Path(CRIU).resolve().parent.parent / "lib"), str(img), keys["alice"][1],
        f"testplugin-{wl.pid}.img"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "plugin", canary]


def refused(criu, img, wl, out, keys, plugin_dir, expect):
    before = out_lines(out)
    r = criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1], check=False)
    log = (img / "restore.log").read_text(errors="replace")
    assert r.returncode != 0, "a damaged checkpoint was restored"
    assert expect in log, log[-3000:]
    wait_gone([wl.pid], timeout=10)
    # No task was forked, so the plugin never got to read anything.
    assert "Forking task" not in log and "fork()ed" not in log
    assert out_lines(out) == before, "the plugin ran on a refused checkpoint"


@pytest.mark.parametrize("where", ["head", "middle", "tail"])
def test_flipped_plugin_image_refused(api_dump, criu, tmp_path, plugin_dir, keys, where):
    wl, img, _, out = api_dump
    d = damaged_copy(tmp_path, img, f"flip-{where}")
    p = d / plugin_image(img).name
    data = bytearray(p.read_bytes())
    off = {"head": 20, "middle": len(data) // 2, "tail": len(data) - 1}[where]
    data[off] ^= 0x01
    p.write_bytes(bytes(data))
    refused(criu, d, wl, out, keys, plugin_dir, p.name)
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_removed_plugin_image_refused(api_dump, criu, tmp_path, plugin_dir, keys):
    wl, img, _, out = api_dump
    d = damaged_copy(tmp_path, img, "removed")
    (d / plugin_image(img).name).unlink()
    refused(criu, d, wl, out, keys, plugin_dir, "missing from the encrypted checkpoint")
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_added_plugin_image_refused(api_dump, criu, tmp_path, plugin_dir, keys):
    """An image file the manifest does not list (a plugin's, in clear, or an
    attacker's) is refused before any plugin could read it."""
    wl, img, _, out = api_dump
    d = damaged_copy(tmp_path, img, "added")
    (d / "testplugin-1.img").write_bytes(b"planted by an attacker")
    refused(criu, d, wl, out, keys, plugin_dir, "testplugin-1.img is in the images directory but not in the "
            "checkpoint's manifest")
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_stale_criu_images_do_not_stop_restore(api_dump, criu, tmp_path, plugin_dir, keys):
    """An image of CRIU's own kinds the manifest does not list (left by an
    earlier dump into the same directory) is never read (criu opens its
    images only through the manifest): the restore goes on."""
    wl, img, canary, out = api_dump
    (img / "core-999999.img").write_bytes(b"an earlier dump's")
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    assert f"read testplugin-{wl.pid}.img {canary}" in out_lines(out)


def test_stale_plugin_image_warned_at_dump(workloads, criu, tmp_path, plugin, plugin_dir, keys):
    """A plugin's image left from an earlier dump into the same directory does
    not fail the dump (it did not write it), which warns that a restore
    refuses it; the restore does, until it is removed."""
    plugin("api")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    img.mkdir()
    (img / "amdgpu-kfd-1.img").write_bytes(b"from an earlier dump")
    criu.dump(wl, img, *libdir(plugin_dir), *enc(keys))
    log = (img / "dump.log").read_text()
    assert "amdgpu-kfd-1.img was in the images directory before the dump and is not part of it" in log
    r = criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1], check=False)
    assert r.returncode != 0
    assert "amdgpu-kfd-1.img is in the images directory but not in the checkpoint's manifest" in \
        (img / "restore.log").read_text()
    wait_gone([wl.pid], timeout=10)
    (img / "amdgpu-kfd-1.img").unlink()
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_plugin_image_from_another_checkpoint_refused(api_dump, workloads, criu, tmp_path, plugin,
                                                      plugin_dir, keys):
    """The plugin's image of another checkpoint (same key), under this one's name."""
    wl, img, _, out = api_dump
    plugin("api")
    other = workloads("secrets", env={"CANARY": new_canary()})
    oimg = tmp_path / "other"
    criu.dump(other, oimg, *libdir(plugin_dir), *enc(keys))
    d = damaged_copy(tmp_path, img, "swapped")
    name = plugin_image(img).name
    shutil.copyfile(plugin_image(oimg), d / name)
    refused(criu, d, wl, out, keys, plugin_dir, name)
    criu.restore(img, *libdir(plugin_dir), "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"


def test_api_plugin_plain(workloads, criu, tmp_path, plugin, plugin_dir):
    """Without --encrypt, criu_image_open() is a plain file, as plugins wrote them."""
    canary, out = plugin("api")
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, *libdir(plugin_dir))
    assert plugin_image(img).read_bytes() == canary.encode()
    criu.restore(img, *libdir(plugin_dir))
    assert wl.report() == "secrets OK"
    assert f"read testplugin-{wl.pid}.img {canary}" in out_lines(out)
    assert "absent testplugin-none.img ENOENT" in out_lines(out)
    assert "reserved core-1.img Invalid argument" in out_lines(out)
    assert "again testplugin-dup.img ok" in out_lines(out)  # a file, as plugins had


def test_engine_files_in_images_dir_kept(workloads, criu, tmp_path, keys):
    """Files that were in the images directory before the dump and that it
    left alone (runc writes descriptors.json there first) do not fail it,
    nor its restore; one the dump changed does."""
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    img.mkdir()
    (img / "descriptors.json").write_text('["/dev/null","pipe:[1]","pipe:[2]"]')
    criu.dump(wl, img, *enc(keys))
    criu.restore(img, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    assert (img / "descriptors.json").exists()


# ---- the amdgpu plugin's image helpers (no AMD GPU here) ----

SRC = pathlib.Path(CRIU).resolve().parent.parent
AMDGPU = SRC / "plugins" / "amdgpu"


@pytest.fixture(scope="session")
def amdgpu_util_dir(tmp_path_factory):
    """workloads/amdgpu_util_plugin.c linked with amdgpu_plugin_util.c as
    patched (the plugin's own build flags)."""
    util = AMDGPU / "amdgpu_plugin_util.c"
    if not util.exists():
        pytest.skip(f"needs CRIU's amdgpu plugin source beside {CRIU} ({util})")
    if "criu_image_open" not in util.read_text():
        pytest.skip(f"{util} does not use criu_image_open(): not criusec's patched tree")
    if not pathlib.Path("/usr/include/libdrm/amdgpu.h").exists():
        pytest.skip("needs libdrm-dev (/usr/include/libdrm/amdgpu.h) to build the amdgpu plugin's helpers")
    d = tmp_path_factory.mktemp("amdgpu")
    subprocess.run(["protoc", f"--proto_path={AMDGPU}", f"--c_out={d}", str(AMDGPU / "criu-amdgpu.proto")],
                   check=True)
    inc = [f"-iquote{p}" for p in (SRC / "include", SRC / "criu" / "include",
                                   SRC / "criu" / "arch" / "x86" / "include", SRC, AMDGPU, d)]
    subprocess.run(["gcc", "-g", "-Wall", "-Werror", "-D_GNU_SOURCE", "-shared", "-fPIC",
                    "-I", str(SRC / "compel" / "include" / "uapi"), "-I/usr/include/libdrm", *inc,
                    "-o", str(d / "amdgpu_util_test.so"), str(HERE / "workloads" / "amdgpu_util_plugin.c"),
                    str(util)], check=True)
    return d


def test_amdgpu_image_helpers(workloads, criu, tmp_path, plugin, amdgpu_util_dir, keys, monkeypatch):
    """The amdgpu plugin's write_img_file(), open_img_file(), close_img_file()
    and read_fp() through criu_image_open(): plain files without --encrypt;
    with it, encrypted images of the manifest, refused when flipped, and
    read back whole before any task runs."""
    for encrypt in (False, True):
        canary, out = plugin(f"amdgpu-{encrypt}")
        wl = workloads("secrets", env={"CANARY": new_canary()})
        img = tmp_path / f"img-{encrypt}"
        args = ["--libdir", str(amdgpu_util_dir)] + (enc(keys) if encrypt else [])
        criu.dump(wl, img, *args)
        names = [f"amdgpu-kfd-{wl.pid}.img", f"amdgpu-pages-{wl.pid}-1234.img"]
        assert sorted(p.name for p in img.iterdir() if p.name.startswith("amdgpu-")) == names
        for n in names:
            data = (img / n).read_bytes()
            if encrypt:
                assert data[:8] == MAGIC and canary.encode() not in data, n
            else:  # the plugin's format: the size (8 bytes), then the contents
                assert data == len(canary).to_bytes(8, "little") + canary.encode(), n
        if encrypt:
            assert files_with(img, canary.encode()) == []
            d = damaged_copy(tmp_path, img, "amdgpu-flip")
            p = d / names[1]
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0x80
            p.write_bytes(bytes(b))
            monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_PID", str(wl.pid))
            refused(criu, d, wl, out, keys, amdgpu_util_dir, names[1])
        monkeypatch.setenv("CRIUSEC_TEST_PLUGIN_PID", str(wl.pid))
        criu.restore(img, *args[:2], *(["--tls-key", keys["alice"][1]] if encrypt else []))
        assert wl.report() == "secrets OK"
        lines = out_lines(out)
        for n in names:
            assert f"read {n} {canary}" in lines, lines


def test_real_amdgpu_plugin_without_gpu(workloads, criu, tmp_path, keys):
    """CRIU's amdgpu plugin as built here (patched), loaded into an encrypted
    dump and restore of a process that uses no GPU (none is here): it loads,
    finds nothing to do, and the checkpoint is as without it."""
    so = AMDGPU / "amdgpu_plugin.so"
    if not so.exists():
        pytest.skip(f"{so} not built (make builds it with libdrm-dev)")
    d = tmp_path / "amdgpu-libdir"
    d.mkdir()
    shutil.copy(so, d)
    wl = workloads("secrets", env={"CANARY": new_canary()})
    img = tmp_path / "img"
    criu.dump(wl, img, "--libdir", d, *enc(keys))
    assert 'Plugin "amdgpu_plugin"' in (img / "dump.log").read_text()
    assert not [p for p in img.iterdir() if p.name.startswith("amdgpu-")]
    criu.restore(img, "--libdir", d, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    assert 'Plugin "amdgpu_plugin"' in (img / "restore.log").read_text()


# ---- the CUDA plugin, with CRIU CI's mocked cuda-checkpoint ----

CUDA = SRC / "plugins" / "cuda"


@pytest.fixture(scope="session")
def mocked_cuda(tmp_path_factory):
    """CRIU's CUDA plugin as built here, and test/cuda-checkpoint's mock of
    NVIDIA's cuda-checkpoint tool, built as ZDTM builds it."""
    so, mock = CUDA / "cuda_plugin.so", SRC / "test" / "cuda-checkpoint" / "cuda-checkpoint.c"
    if not so.exists() or not mock.exists():
        pytest.skip(f"needs {so} (make builds it) and {mock}")
    d = tmp_path_factory.mktemp("cuda")
    (d / "lib").mkdir()
    shutil.copy(so, d / "lib")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(d / "cuda-checkpoint"), str(mock)], check=True)
    return d


def test_cuda_plugin_mocked_encrypt_compress(workloads, criu, tmp_path, mocked_cuda, keys, monkeypatch):
    """As CRIU's CI runs the CUDA plugin without a GPU: its mocked
    cuda-checkpoint on PATH, and fault 138 (FI_PLUGIN_CUDA_FORCE_ENABLE),
    which makes the plugin act on every task instead of looking for a GPU.
    With --encrypt --compress the plugin pauses and checkpoints the task,
    nothing of it is in clear (the CUDA plugin writes no image: GPU memory
    would come back into the task's pages), and the restore resumes it."""
    monkeypatch.setenv("PATH", f"{mocked_cuda}:{os.environ['PATH']}")
    monkeypatch.setenv("CRIU_FAULT", "138")
    canary = new_canary()
    wl = workloads("secrets", env={"CANARY": canary})
    img = tmp_path / "img"
    lib = ["--libdir", mocked_cuda / "lib"]
    criu.dump(wl, img, *lib, *enc(keys), "--compress")
    log = (img / "dump.log").read_text()
    assert f"cuda_plugin: Checkpointing CUDA devices on pid {wl.pid}" in log, log[-3000:]
    assert "compressed with" in log
    assert files_with(img, canary.encode()) == []
    criu.restore(img, *lib, "--tls-key", keys["alice"][1])
    assert wl.report() == "secrets OK"
    assert "cuda_plugin: resuming devices on pid" in (img / "restore.log").read_text()
