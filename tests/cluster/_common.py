"""What the cluster scripts share: a 3-node local cluster, and asking an actor where it runs."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402


def start_cluster() -> tuple[Cluster, list]:
    """A head and two workers of 1 CPU each on this machine, with this process connected as the driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    cluster.wait_for_nodes()
    return cluster, workers


def actor_context(handle) -> tuple[str, bool]:
    """The node an actor runs on, and whether Ray restarted it."""
    return ray.get(handle.__ray_call__.remote(
        lambda self: (ray.get_runtime_context().get_node_id(),
                      ray.get_runtime_context().was_current_actor_reconstructed)))
