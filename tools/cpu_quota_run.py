"""Run a command as on a slower machine: every Ray worker process is held to FRACTION of one CPU
(its own cgroup-v1 CFS quota), everything else (driver, raylet, gcs) to FRACTION of all CPUs.

    sudo FRACTION=0.625 python tools/cpu_quota_run.py python -m tune_study.grid

Needs root and the cgroup-v1 cpu controller at /sys/fs/cgroup/cpu. A 1-thread trial that trains at
18.4 samples/s unthrottled runs at about 0.625 x 18.4 = 11.5 under FRACTION=0.625. Ray names its
worker processes ``ray::...``; a watcher moves each into its own quota group as it appears."""
import os
import subprocess
import sys
import time
from pathlib import Path

FRACTION = float(os.environ.get("FRACTION", "0.625"))
ROOT = Path("/sys/fs/cgroup/cpu/slowsim")
PERIOD = 100000

def group(name, cpus):
    g = ROOT / name
    g.mkdir(parents=True, exist_ok=True)
    (g / "cpu.cfs_period_us").write_text(str(PERIOD))
    (g / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD)))
    return g

ROOT.mkdir(exist_ok=True)
rest = group("rest", FRACTION * os.cpu_count())
proc = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: (rest / "cgroup.procs").write_text(str(os.getpid())))
moved = set()
while proc.poll() is None:
    for pid in (rest / "cgroup.procs").read_text().split():
        if pid in moved:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::"):
            try:
                (group(f"w{pid}", FRACTION) / "cgroup.procs").write_text(pid)
                moved.add(pid)
            except OSError:
                pass
    time.sleep(0.2)
print(f"throttle: {len(moved)} Ray worker processes held to {FRACTION} CPU each", file=sys.stderr)
sys.exit(proc.returncode)
