"""Scale: the smoke study on a 2-node local Ray cluster places trials on both nodes."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tune_study import grid

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.shutdown()   # the shared local Ray, if a module before this one started it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_trials_run_on_both_nodes(two_nodes, tmp_path):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--address", two_nodes.address,
                    "--no-report"])
    assert rc == 0
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "TERMINATED").all()
    # one CPU per trial, one CPU per node, two trials at a time: both nodes must have run trials
    assert trials.node_id.nunique() == 2
