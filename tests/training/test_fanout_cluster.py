"""Crossval on a Ray cluster of two nodes (``ray.cluster_utils.Cluster``: two raylets on this machine)."""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest

from foldwise.core.errors import UserError
from foldwise.training import fanout
from foldwise.training.crossval import run_crossval
from foldwise.training.fanout import RayFanout, RaySettings
from tests.training.test_fanout import arrays, assert_same, sequential

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - only with Ray installed


@pytest.mark.slow
def test_a_two_node_cluster_runs_tasks_on_both_nodes_and_gives_the_same_tables(tiny_set, tiny_stats, tiny_params,
                                                                              monkeypatch):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)  # one (logical) GPU in the whole cluster
    # what Ray does with no address given: a fan-out that dropped FOLDWISE_RAY's would start a Ray of its own
    monkeypatch.setenv("RAY_ADDRESS", "local")
    try:
        cluster.wait_for_nodes()
        # joined by address, as FOLDWISE_RAY=<address> does: this stage starts nothing and stops nothing
        with RayFanout(RaySettings(cluster.address, cpus=1, gpus=0)) as fanout:
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
            assert len(nodes) == 2
            with RayFanout(RaySettings(cluster.address, cpus=1, gpus=None)) as auto:  # FOLDWISE_RAY_GPUS unset
                assert auto.gpus == 1.0 and auto.device_type == "cuda"  # a cluster with a GPU: one per run
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
            with RayFanout(RaySettings("local", cpus=1, gpus=None)) as auto:  # FOLDWISE_RAY_GPUS unset
                assert auto.gpus == 0.0 and auto.device_type == "cpu"  # no GPU in the cluster: CPU runs
            with pytest.raises(UserError) as refused:
                RayFanout(RaySettings("local", cpus=1, gpus=1)).__enter__()
            assert str(refused.value) == ("FOLDWISE_RAY_GPUS=1, but the Ray cluster has 0 GPUs in all: no run could "
                                          "ever start; ask for at most that")
            assert ray.is_initialized()  # the refused fan-out started nothing, so it stopped nothing
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
        cluster.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


def test_a_cluster_address_nothing_answers_at_is_one_line_at_once():
    """Ray would retry it for many minutes without a word."""
    port = free_port()
    assert not ray.is_initialized()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        with pytest.raises(UserError) as info:
            RayFanout(RaySettings(address, cpus=1)).__enter__()
        assert str(info.value) == (f"FOLDWISE_RAY={address}: cannot join that Ray cluster (nothing answers at "
                                   f"127.0.0.1:{port}: Connection refused); start it with `ray start --head`, or use "
                                   f"FOLDWISE_RAY=local")
        assert time.monotonic() - started < 5 and not ray.is_initialized()
    with pytest.raises(UserError) as info:  # IPv6, in brackets: tried at ::1 (refused, or no IPv6 on this machine)
        RayFanout(RaySettings(f"[::1]:{port}", cpus=1)).__enter__()
    connect_errors = [os.strerror(e) for e in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH,
                                               errno.EAFNOSUPPORT)]  # not a failed name lookup of "[::1]"
    assert any(str(info.value).startswith(f"FOLDWISE_RAY=[::1]:{port}: cannot join that Ray cluster (nothing answers "
                                          f"at [::1]:{port}: {reason}); ") for reason in connect_errors), info.value


def test_an_address_that_never_answers_times_out_in_connect_seconds(monkeypatch):
    """A server whose queue of connections is full drops new ones unanswered, as a firewall does."""
    monkeypatch.setattr(fanout, "CONNECT_SECONDS", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        waiting = [socket.socket() for _ in range(4)]
        for client in waiting:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        try:
            started = time.monotonic()
            with pytest.raises(UserError) as info:
                RayFanout(RaySettings(f"127.0.0.1:{port}", cpus=1)).__enter__()
            assert time.monotonic() - started < 3
        finally:
            for client in waiting:
                client.close()
    assert f"(nothing answers at 127.0.0.1:{port}: timed out); " in str(info.value)


def test_an_address_ray_cannot_read_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a fan-out that dropped the address would start a Ray instead
    assert not ray.is_initialized()
    for address in ("head-without-a-port", "127.0.0.1:no-port"):
        with pytest.raises(UserError) as info:
            RayFanout(RaySettings(address, cpus=1)).__enter__()
        assert str(info.value).startswith(f"FOLDWISE_RAY={address}: cannot join that Ray cluster (")
        assert str(info.value).endswith("); start it with `ray start --head`, or use FOLDWISE_RAY=local")
        assert "nothing answers" not in str(info.value)  # Ray's own reason: the address cannot be read
        assert not ray.is_initialized()
