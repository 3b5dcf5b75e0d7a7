"""Crossval on a Ray cluster of two nodes (``ray.cluster_utils.Cluster``: two raylets on this machine)."""

from __future__ import annotations

import pytest

from foldwise.training.crossval import run_crossval
from foldwise.training.fanout import RayFanout, RaySettings
from tests.training.test_fanout import arrays, assert_same, sequential

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - only with Ray installed


@pytest.mark.slow
def test_a_two_node_cluster_runs_tasks_on_both_nodes_and_gives_the_same_tables(tiny_set, tiny_stats, tiny_params):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        # joined by address, as FOLDWISE_RAY=<address> does: this stage starts nothing and stops nothing
        with RayFanout(RaySettings(cluster.address, cpus=1, gpus=0)) as fanout:
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
            assert len(nodes) == 2
            fanned = run_crossval(arrays(tiny_set, tiny_stats), 3, tiny_params, fanout=fanout)
            assert ray.is_initialized()
        assert not ray.is_initialized()  # it connected, so it disconnects; the cluster goes on
        assert {where["node"] for where in fanout.placements.values()} == nodes  # both nodes trained runs
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert_same(sequential(tiny_set, tiny_stats, tiny_params), fanned)


@pytest.mark.slow
def test_local_starts_a_ray_of_its_own_even_beside_a_running_cluster_and_stops_it(capsys):
    """``FOLDWISE_RAY=local`` never joins a cluster already running on this machine (which Ray's own
    default address would), takes the resources it is given, and shuts down what it started."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        with RayFanout(RaySettings("local", cpus=1, gpus=0), num_cpus=1, num_gpus=0) as fanout:
            assert ray.is_initialized() and len([n for n in ray.nodes() if n["Alive"]]) == 1
            assert ray.cluster_resources()["CPU"] == 1 and fanout.gpus == 0.0
            assert fanout.describe() == "ray (1 nodes, 1 CPUs, 0 GPUs; 1 CPU and 0 GPU per run)"  # no GPU entry
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
        cluster.shutdown()
