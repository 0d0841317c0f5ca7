"""cluster.yaml and cluster.local.yaml pass Ray's own offline checks (no network, no SSH)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click import ClickException
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster.local.yaml"]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def check(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does first: fill in the provider's defaults, then validate (in that order)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", FILES)
def test_cluster_file_is_valid_and_wires_the_project(name: str) -> None:
    prepared = check(load(name))
    head = " && ".join(prepared["head_start_ray_commands"])
    worker = " && ".join(prepared["worker_start_ray_commands"])
    gcs_port = re.search(r"ray start --head --port=(\d+)", head).group(1)
    redis_port = re.search(r"redis-server --port (\d+)", head).group(1)
    assert gcs_port == "6379" and redis_port == "6380"
    assert all(f"redis://{host}:{redis_port}/0" in " ".join(prepared[key]) for key, host in
               [("head_setup_commands", "127.0.0.1"), ("worker_setup_commands", "$RAY_HEAD_IP")])
    assert "--dashboard-host=0.0.0.0" in head and "--metrics-export-port=8080" in head and "--metrics-export-port=8080" in worker
    assert f"--address=$RAY_HEAD_IP:{gcs_port}" in worker
    assert prepared["file_mounts"] == {"~/tradpal-ray": "."}
    assert any(re.search(r"pip install .*-e ~/tradpal-ray", command) for command in prepared["setup_commands"])
    assert any("TRADPAL_STORE=" in command for command in prepared["setup_commands"])
    types = prepared["available_node_types"].values()
    assert sum(t["min_workers"] for t in types) >= 1 and all(t["max_workers"] >= t["min_workers"] for t in types)


def test_aws_cluster_autoscales_cpu_workers_and_keeps_the_store_on_s3() -> None:
    prepared = check(load("cluster.yaml"))
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}
    worker = prepared["available_node_types"]["cpu_worker"]
    assert (worker["min_workers"], worker["max_workers"]) == (1, 8) and worker["node_config"]["InstanceType"]
    assert any("TRADPAL_STORE=s3://" in command for command in prepared["setup_commands"])


def test_wrong_type_fails_with_a_clear_message() -> None:
    config = load("cluster.yaml")
    config["max_workers"] = "lots"
    with pytest.raises(jsonschema.ValidationError, match="'lots' is not of type 'integer'"):
        check(config)


def test_missing_required_field_fails_with_a_clear_message() -> None:
    config = load("cluster.yaml")
    del config["available_node_types"]["cpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="'node_config' is a required property"):
        check(config)
    config = load("cluster.yaml")
    config["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        check(config)


def test_local_cluster_without_head_ip_fails_with_a_clear_message() -> None:
    config = load("cluster.local.yaml")
    del config["provider"]["head_ip"]
    with pytest.raises(ClickException, match="Please supply a `head_ip` and list of `worker_ips`"):
        check(config)
