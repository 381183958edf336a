"""Strategy choice and global-batch division."""

import json

import pytest
import tensorflow as tf

from trainer import distribution


def tf_config(workers, chief=0):
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": 0}})}


@pytest.mark.parametrize("environ,expected", [
    ({}, 0), ({"TF_CONFIG": ""}, 0), (tf_config(1), 1), (tf_config(2), 2),
    (tf_config(1, chief=1), 2)])
def test_workers_in_tf_config(environ, expected):
    assert distribution.num_workers_in_tf_config(environ) == expected


def test_bad_tf_config_is_reported():
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribution.num_workers_in_tf_config({"TF_CONFIG": "{not json"})


def test_auto_choice_order():
    resolve = distribution.resolve_strategy_name
    # This test process has one logical CPU.
    assert resolve("auto", None, 0, environ={}) == "one_device"
    assert resolve("auto", "my-tpu", 0, environ=tf_config(4)) == "tpu"
    assert resolve("auto", None, 0, environ=tf_config(2)) == (
        "multi_worker_mirrored")
    assert resolve("auto", None, 4, environ=tf_config(1)) == "mirrored"
    assert resolve("auto", None, 1, environ={}) == "one_device"
    assert resolve("mirrored", None, 0, environ={}) == "mirrored"
    with pytest.raises(ValueError, match="distribution_strategy"):
        resolve("parameter_server", None, 0, environ={})


def test_default_is_one_device_on_cpu():
    strategy = distribution.create_strategy("auto", None, 0)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert distribution.is_chief(strategy)


def test_asking_for_missing_gpus_is_an_error():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="GPU"):
        distribution.create_strategy("auto", None, 1)


def test_global_batch_division():
    assert distribution.per_replica_batch_size(64, 8) == 8
    assert distribution.per_replica_batch_size(3, 1) == 3
    with pytest.raises(ValueError,
                       match=r"train_dataset_options.batch_size 6 .* "
                       r"divisible by the 4 replicas"):
        distribution.per_replica_batch_size(
            6, 4, "train_dataset_options.batch_size")
    with pytest.raises(ValueError, match="positive"):
        distribution.per_replica_batch_size(0, 1)
