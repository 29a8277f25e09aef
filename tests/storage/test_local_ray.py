"""The Ray that `World.start` starts when no address is given, as `lodestore simulate` does: loopback only, and gone
with its driver.

Each test runs the driver in a subprocess (a session of its own, so its process group can be killed), because the
test session's Ray is already running and `World.start` would use it. Linux only: processes and sockets are read
from /proc.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads processes and sockets in /proc")

DRIVER = """
import json, os, sys
from lodestore.storage import World
world = World.start("local-probe", backend="sqlite", path=sys.argv[1], budget=None)
world.server("job-1").datastores.get_data_store("players").set("user_1", {"coins": 1})
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.read()          # until the test closes stdin, or kills this process group
world.shutdown()
"""

ENDED_WITHIN_S = 120.0   # guards a hang only: Ray's processes end within seconds of their driver


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process under `root`, and root: pid -> start time (a pid reused later is another process)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = stat
    found = {root: parents[root][2]}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, started) in parents.items():
            if ppid in found and pid not in found:
                found[pid] = started
                grew = True
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[1] != "Z"


def _listening() -> dict[str, str]:
    """Socket inode -> local address of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":   # TCP_LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # the kernel prints each 32-bit word in host order (little-endian here)
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out[fields[9]] = str(ipaddress.ip_address(packed))
    return out


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.fixture
def local_world(tmp_path):
    """A driver that started a local Ray world and waits: (its Popen, its processes as pid -> start time, db)."""
    db = tmp_path / "world.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(db)], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        line = driver.stdout.readline()
        assert line, f"the driver ended before its world was up (exit status {driver.poll()})"
        pid = json.loads(line)["pid"]
        yield driver, _descendants(pid), db
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def test_every_socket_of_a_local_ray_listens_on_loopback_only(local_world):
    _, processes, _ = local_world
    listening = _listening()
    bound = {(pid, listening[inode]) for pid in processes for inode in _socket_inodes(pid) if inode in listening}
    assert len({pid for pid, _ in bound}) >= 3, bound   # the driver, the GCS, the raylet at least
    assert [(pid, address) for pid, address in bound if not _is_loopback(address)] == []


def test_killing_the_driver_process_group_ends_every_process_of_its_ray_and_frees_the_world_file(local_world):
    driver, processes, db = local_world
    assert len(processes) >= 5, processes   # the driver, the GCS, the raylet, the DataStore and MemoryStore actors
    os.killpg(driver.pid, signal.SIGKILL)
    deadline = time.monotonic() + ENDED_WITHIN_S
    while (left := [pid for pid, started in processes.items() if _alive(pid, started)]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    with open(f"{db}.lock", "rb") as lock:     # nothing holds the world file: a new world may take it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
