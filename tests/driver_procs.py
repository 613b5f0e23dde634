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
