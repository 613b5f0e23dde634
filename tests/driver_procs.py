"""Test helpers for a study driver run as its own process group: find its Ray processes, kill it all."""
from __future__ import annotations

import os
import signal
import subprocess

import psutil


def ray_procs(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (a run's own RAY_TMPDIR)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def dashboard_procs(marker: str) -> list[psutil.Process]:
    """The Ray dashboard's processes among ``ray_procs(marker)``: the full web dashboard. A Ray
    started with include_dashboard=False still runs dashboard.py, as a minimal head with
    ``--modules-to-load=UsageStatsHead`` and no web UI: that one is not counted."""
    out = []
    for p in ray_procs(marker):
        try:
            cmd = p.cmdline()
            if any("dashboard/dashboard.py" in part for part in cmd) and \
                    not any(part.startswith("--modules-to-load") for part in cmd):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: a driver's own dashboard port, so that two drivers the
    suite runs at once never race for Ray's default 8265 (the loser waits about a minute)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen, marker: str | None = None) -> None:
    """SIGKILL the driver and everything it started, like a power cut: its children, and with
    ``marker`` also the Ray processes that name it (they may have left the driver's process tree)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    for p in family + (ray_procs(marker) if marker else []):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=20)
