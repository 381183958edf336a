"""Choosing the tf.distribute strategy and splitting the global batch.

'auto' picks, in order: TPUStrategy when a TPU is named;
MultiWorkerMirroredStrategy when TF_CONFIG lists several workers;
MirroredStrategy over the GPUs when more than one is asked for, or over the
logical CPU devices when the host CPU was split into several (tests do this);
otherwise OneDeviceStrategy on the first GPU or the CPU.
"""

import json
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from max_deeplab_tf import cli

STRATEGY_NAMES = ("auto", "one_device", "mirrored", "multi_worker_mirrored",
                  "tpu")


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices.

    Must run before TensorFlow initialises its devices (before any op).

    Raises:
      RuntimeError: if the devices were already initialised with another
        split.
    """
    if num_devices <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0],
            [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as e:
        logical = tf.config.list_logical_devices("CPU")
        if len(logical) != num_devices:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} devices: TensorFlow "
                f"already initialised {len(logical)}: {e}") from e


def num_workers_in_tf_config(environ=None) -> int:
    """Number of worker tasks (chief included) TF_CONFIG describes (0: none).

    Raises:
      ValueError: if TF_CONFIG is not valid JSON.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        return 0
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise cli.UserError(f"TF_CONFIG is not valid JSON: {e}") from e
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def resolve_strategy_name(name: str, tpu: Optional[str], num_gpus: int,
                          environ=None) -> str:
    """The concrete strategy 'auto' (or an explicit name) stands for."""
    if name not in STRATEGY_NAMES:
        raise cli.UserError(
            f"trainer_options.distribution_strategy {name!r} is not one of "
            f"{list(STRATEGY_NAMES)}")
    if name != "auto":
        return name
    if tpu:
        return "tpu"
    if num_workers_in_tf_config(environ) > 1:
        return "multi_worker_mirrored"
    if num_gpus > 1:
        return "mirrored"
    if num_gpus == 0 and len(tf.config.list_logical_devices("CPU")) > 1:
        return "mirrored"
    return "one_device"


def create_strategy(name: str = "auto", tpu: Optional[str] = None,
                    num_gpus: int = 0) -> tf.distribute.Strategy:
    """Creates the strategy; call it before any other TensorFlow work.

    Args:
      name: One of STRATEGY_NAMES (trainer_options.distribution_strategy).
      tpu: TPU name or grpc address ('local' for a TPU VM); None for none.
      num_gpus: GPUs to use; 0 runs on the CPU.

    Returns:
      The tf.distribute.Strategy.
    """
    resolved = resolve_strategy_name(name, tpu, num_gpus)
    if resolved == "tpu":
        if not tpu:
            raise cli.UserError(
                "trainer_options.distribution_strategy 'tpu' needs --tpu")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu if tpu != "local" else "local")
        if tpu not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif resolved == "multi_worker_mirrored":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif resolved == "mirrored":
        if num_gpus > 0:
            gpus = tf.config.list_logical_devices("GPU")
            if len(gpus) < num_gpus:
                raise cli.UserError(
                    f"--num_gpus={num_gpus} but only {len(gpus)} GPU(s) are "
                    "visible")
            devices = [d.name for d in gpus[:num_gpus]]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        if num_gpus > 0:
            if not tf.config.list_logical_devices("GPU"):
                raise cli.UserError(
                    f"--num_gpus={num_gpus} but no GPU is visible")
            device = "/gpu:0"
        else:
            device = "/cpu:0"
        strategy = tf.distribute.OneDeviceStrategy(device)
    logging.info("Strategy %s with %d replica(s) in sync",
                 type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def per_replica_batch_size(global_batch_size: int, num_replicas: int,
                           field: str = "batch_size") -> int:
    """The per-replica batch; the global batch must divide evenly.

    Raises:
      cli.UserError: naming the field when it does not.
    """
    if global_batch_size <= 0:
        raise cli.UserError(
            f"{field} must be positive, got {global_batch_size}")
    if global_batch_size % num_replicas:
        raise cli.UserError(
            f"{field} {global_batch_size} is the global batch and must be "
            f"divisible by the {num_replicas} replicas in sync")
    return global_batch_size // num_replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this task writes checkpoints, summaries and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type = resolver.task_type if resolver else None
    task_id = resolver.task_id if resolver else 0
    if task_type in (None, "chief"):
        return True
    # Without a 'chief' task, worker 0 is the chief.
    has_chief = bool(resolver and "chief" in resolver.cluster_spec().as_dict())
    return task_type == "worker" and task_id == 0 and not has_chief
