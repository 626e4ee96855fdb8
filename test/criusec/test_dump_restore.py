"""Plain dump and restore of real workloads: the state carries over."""
import socket
import time
from helpers import free_port


def counter_value(wl):
    return int(wl.report().split()[1])


def test_counter_continues(workloads, criu, tmp_path):
    wl = workloads("counter")
    time.sleep(0.2)
    before = counter_value(wl)
    criu.dump(wl, tmp_path / "img")
    criu.restore(tmp_path / "img")
    time.sleep(0.2)
    after = counter_value(wl)
    assert after > before


def test_memory_intact(workloads, criu, tmp_path):
    wl = workloads("memory", 64)
    assert wl.report() == f"memory OK {64 << 20}"
    criu.dump(wl, tmp_path / "img")
    criu.restore(tmp_path / "img")
    assert wl.report() == f"memory OK {64 << 20}"


def test_file_offset_kept(workloads, criu, tmp_path):
    wl = workloads("fileoff", tmp_path / "data.bin")
    assert wl.report() == "offset 4321"
    criu.dump(wl, tmp_path / "img")
    criu.restore(tmp_path / "img")
    assert wl.report() == "offset 4321"


def greeting(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        return s.recv(100).decode()


def test_tcp_listener_accepts(workloads, criu, tmp_path):
    port = free_port()
    wl = workloads("tcp", port)
    assert greeting(port) == f"hello from {wl.pid}\n"
    criu.dump(wl, tmp_path / "img")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        raise AssertionError("listener still accepting after dump")
    except OSError:
        pass
    criu.restore(tmp_path / "img")
    assert greeting(port) == f"hello from {wl.pid}\n"


def thread_counts(wl):
    return [int(x) for x in wl.report().split()[1:]]


def test_threads_continue(workloads, criu, tmp_path):
    wl = workloads("threads")
    time.sleep(0.2)
    before = thread_counts(wl)
    assert len(before) == 4 and all(c > 0 for c in before)
    criu.dump(wl, tmp_path / "img")
    criu.restore(tmp_path / "img")
    time.sleep(0.3)
    after = thread_counts(wl)
    assert all(a > b for a, b in zip(after, before)), (before, after)


def pipe_report(wl):
    _, verdict, seq = wl.report().split()
    return verdict, int(seq)


def test_pipe_between_children(workloads, criu, tmp_path):
    wl = workloads("pipe2")
    time.sleep(0.3)
    verdict, before = pipe_report(wl)
    assert verdict == "OK" and before > 0
    criu.dump(wl, tmp_path / "img")
    criu.restore(tmp_path / "img")
    time.sleep(0.3)
    verdict, after = pipe_report(wl)
    assert verdict == "OK", "a number was lost or repeated across the dump"
    assert after > before
