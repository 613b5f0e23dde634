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


def kill_tree(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the driver and everything it started (its children, and its Ray processes)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    for p in family + ray_procs(marker):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=20)
