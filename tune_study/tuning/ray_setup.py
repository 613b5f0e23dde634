"""Ray itself: start a local instance or join a cluster (the dashboard, with a fallback when it
cannot run), and the resources each trial asks for."""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from ..study_sections import Resources

log = logging.getLogger(__name__)

EXPOSED_WARNING = (
    "the Ray dashboard will listen on {host}, i.e. on every network interface. An exposed Ray "
    "dashboard and jobs API let anyone who can reach it run code on this machine (ShadowRay, "
    "CVE-2023-48022). Keep token auth on and firewall the port, or use 127.0.0.1 with an SSH tunnel.")



def dashboard_warning(host: str) -> str | None:
    """The plain warning for a dashboard bound beyond loopback; None for loopback."""
    return None if host in ("127.0.0.1", "localhost", "::1") else EXPOSED_WARNING.format(host=host)


def dashboard_unavailable() -> str | None:
    """Why Ray's dashboard cannot run here (a package of the ``default`` extra is missing), or None.
    Ray's own list of what the dashboard imports is the module ``ray.dashboard.optional_deps``."""
    import importlib

    try:
        importlib.import_module("ray.dashboard.optional_deps")
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def init_ray(address: str | None, dashboard_host: str, dashboard_port: int, num_cpus: int | None,
             dashboard: bool = True):
    """Start or join Ray with the dashboard (``dashboard=False``: a headless local instance, for batch
    jobs and CI, which saves the dashboard's processes); a missing dashboard is a warning, not a crash."""
    import ray

    if ray.is_initialized():  # a caller (a notebook, a test) already runs Ray: use it, leave it up
        return None
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: the dashboard and jobs API accept anyone who can reach them.")
    if address:
        return ray.init(address=address)
    warning = dashboard_warning(dashboard_host) if dashboard else None   # no dashboard, nothing exposed
    if warning:
        log.warning(warning)
    kw = {"num_cpus": num_cpus, "dashboard_host": dashboard_host, "dashboard_port": dashboard_port}
    kw["address"] = "local"  # a new local instance, never a cluster someone else started here
    import torch

    if torch.cuda.is_available():
        # Ray counts GPUs through NVML and says 0, without an error, when that fails: the grid would
        # then run every trial at once, uncapped, on the GPU torch sees. Tell Ray what torch sees.
        kw["num_gpus"] = torch.cuda.device_count()
    if not dashboard:
        return ray.init(include_dashboard=False, **kw)
    missing = dashboard_unavailable()
    if missing:
        # Checked before ray.init: a start that fails on the dashboard leaves its half-started
        # processes behind, and the next ray.init then times out.
        log.warning("the Ray dashboard is not available here (%s); running without it. "
                    "Install ray[default] for the dashboard.", missing)
        return ray.init(include_dashboard=False, **kw)
    try:
        return ray.init(include_dashboard=True, **kw)
    except Exception as e:  # e.g. the 'default' extra (aiohttp_cors, opencensus) is not installed
        log.warning("the Ray dashboard could not start (%s: %s); running without it. Install ray[default] "
                    "for the dashboard.", type(e).__name__, str(e).splitlines()[0][:200])
        if ray.is_initialized():
            ray.shutdown()
        return ray.init(include_dashboard=False, **kw)


def print_dashboard(ctx) -> None:
    url = getattr(ctx, "dashboard_url", None)
    if ctx is None:
        print("Ray: using the Ray instance already running in this process")
        return
    if not url:
        print("Ray dashboard: not running")
        return
    url = url if "://" in url else f"http://{url}"
    token = Path.home() / ".ray" / "auth_token"
    print(f"Ray dashboard: {url}")
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
        print(f"  log in with the token in {token} (print it with `ray get-auth-token`); "
              "APIs answer 401 without it")


def resources_for(res: Resources, n_trials: int):
    """Per-trial resources (a study's ``resources``): CPU threads split across concurrent trials; GPU
    (fractions) on GPU clusters."""
    import ray

    cluster = ray.cluster_resources()
    cpus, gpus = int(cluster.get("CPU", 1)), cluster.get("GPU", 0)
    conc = res.max_concurrent_trials
    if gpus:
        gpt = 1 if res.gpus_per_trial == "auto" else res.gpus_per_trial
        if conc == "auto":
            conc = None  # Ray packs by the GPU fractions below
        cpt = res.cpus_per_trial
        if cpt == "auto":  # share the CPUs among as many trials as the GPUs can hold at once
            smallest = min([gpt or 1, *(res.gpu_fraction or {}).values()])
            cpt = max(1, cpus // max(1, int(gpus / smallest)))
    else:
        gpt = 0
        if conc == "auto":
            conc = max(1, min(n_trials, cpus))  # one trial per core beats 2 threads per trial here
        cpt = res.cpus_per_trial
        if cpt == "auto":
            cpt = max(1, cpus // conc)
    fractions = res.gpu_fraction

    def per_trial(config):
        g = gpt
        if gpus and fractions:
            g = fractions.get("default", gpt)
            for limit in sorted(k for k in fractions if k != "default"):
                if config["batch_size"] <= limit:
                    g = fractions[limit]
                    break
        return {"cpu": cpt, "gpu": g}

    return per_trial, conc, int(max(1, cpt))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def keep_alive(ctx) -> None:
    """Keep the driver (and the dashboard) up until Ctrl-C or SIGTERM; then return (the caller shuts
    Ray down). Tune leaves its own SIGINT handler installed after fit, which only ends a Tune run and
    keeps the driver up: ours go in first, and Python's defaults come back after."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    print_dashboard(ctx)
    print("keeping the driver alive for the dashboard; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
