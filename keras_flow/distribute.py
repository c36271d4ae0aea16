"""tf.distribute strategies for training, by name (the CLI's `--strategy`).

Build, `initialize` and `compile` the model inside `strategy.scope()`; `fit` then splits each
global batch across the replicas:

    strategy = make_strategy("mirrored")          # "default", "mirrored", "multi-worker", "tpu"
    with strategy.scope():
        model = keras_flow.Glow(..., image_shape=(32, 32, 3))
        model.initialize(init_batch)              # once, here: not in a replica/step function
        model.compile(optimizer=...)
    model.fit(dataset.batch(global_batch_size))  # each replica gets global / num_replicas

Batch, loss and learning rate. The batch of the dataset is the *global* batch; each of the
`strategy.num_replicas_in_sync` replicas computes the model on its share and `add_loss`
registers that share's mean bits/dim. Keras scales each replica's loss by `1 / num_replicas` and
sums the gradients, so the update is the gradient of the mean over the global batch: the same
update (to float round-off) as one device running the whole global batch. Hence the rule: for
the same global batch keep the same learning rate and warm-up (warm-up steps count optimizer
updates, i.e. global batches; "1epoch" is num_train / global batch of them). Adding replicas
at a fixed *per-replica* batch multiplies the global batch; then retune as for any larger
batch (the usual starting points: lr times the batch factor for SGD, times its square root
for Adam/Adamax, with a warm-up at least as long in images).

Actnorm's data-dependent initialisation must run once in the cross-replica context, inside
`strategy.scope()` and outside the replicated step: its assignments then reach every replica
(`initialize(model, batch)` here raises inside a replica context, and `fit` with the
`ActnormCheck` callback raises under several replicas while an actnorm is uninitialised;
train.py uses both). Under `"multi-worker"` every worker must run it on the same batch
(`keras_flow.data`'s `init_batch` is drawn with the run's seed, so it is).

Under `"multi-worker"` Keras cannot reduce a model's scalar step logs
(tensorflow/tensorflow#72388): call `reducible_step_logs(model)` once after building it.
"""

import json
import os
from pathlib import Path

import keras
import tensorflow as tf

from keras_flow import compat
from keras_flow.layers.actnorm import Actnorm

STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")

TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\'')


def make_strategy(name="default"):
    """The `tf.distribute.Strategy` named `name`.

    - `"default"`: the current (by default single-device) strategy.
    - `"mirrored"`: `MirroredStrategy` over all local GPUs; without GPUs, over the logical CPU
      devices (one unless `split_cpu(n)` ran first, for testing on a CPU).
    - `"multi-worker"`: `MultiWorkerMirroredStrategy`; the cluster and this worker's index come
      from the `TF_CONFIG` environment variable (`TF_CONFIG_EXAMPLE`). Every worker runs the
      same command; worker 0 is the chief.
    - `"tpu"`: `TPUStrategy` on the TPU named by `TPU_NAME` (a Cloud TPU node), else the local
      TPU (a TPU VM).

    Create the strategy at the start of the program: `"multi-worker"` must come before
    TensorFlow runs anything, and the CPU split for `"mirrored"` before its devices exist.

    Raises:
        ValueError: for an unknown name, a missing or malformed `TF_CONFIG`, or no TPU.
        RuntimeError: for `"multi-worker"` after TensorFlow has started.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(local_devices())
    if name == "multi-worker":
        check_tf_config()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow runs anything "
                "(the first tensor or dataset): make the strategy first thing in the "
                f"program. ({error})") from error
    if name == "tpu":
        return tpu_strategy()
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")


def local_devices():
    """Names of the devices a `MirroredStrategy` replicates over: the GPUs, else the CPUs."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def split_cpu(num_devices):
    """Splits the CPU into `num_devices` logical devices, so that `make_strategy("mirrored")`
    runs that many replicas on a machine without GPUs (for testing: the replicas share cores).

    Must run before TensorFlow initialises its devices, i.e. before the first tensor, dataset or
    strategy of the process; call it at the top of the program.

    Raises:
        ValueError: if `num_devices` < 1.
        RuntimeError: if TensorFlow's devices are already initialised.
    """
    if int(num_devices) < 1:
        raise ValueError(f"num_devices must be >= 1; got {num_devices}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    configs = [tf.config.LogicalDeviceConfiguration() for _ in range(int(num_devices))]
    try:
        tf.config.set_logical_device_configuration(cpu, configs)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) == int(num_devices):
            return
        raise RuntimeError(
            f"split_cpu({num_devices}) must run before TensorFlow initialises its devices "
            "(before the first tensor, dataset or strategy); call it first thing in the "
            "program, or in a fresh process.") from error


def check_tf_config():
    """Raises `ValueError` unless `TF_CONFIG` names a cluster of workers and this task."""
    text = os.environ.get("TF_CONFIG")
    problem = None
    if not text:
        problem = "TF_CONFIG is not set"
    else:
        try:
            config = json.loads(text)
            workers = config["cluster"]["worker"]
            index = int(config["task"]["index"])
            if config["task"]["type"] not in config["cluster"]:
                problem = f"task type {config['task']['type']!r} is not in the cluster"
            elif config["task"]["type"] == "worker" and not 0 <= index < len(workers):
                problem = f"task index {index} is outside the {len(workers)} workers"
        except (ValueError, KeyError, TypeError) as error:
            problem = f"TF_CONFIG is malformed ({type(error).__name__}: {error})"
    if problem:
        raise ValueError(
            f"--strategy multi-worker needs TF_CONFIG on every worker: {problem}. Example, for "
            f"worker 0 of two (index 1 on the other host): {TF_CONFIG_EXAMPLE}. On one host "
            "use --strategy mirrored.")


def tpu_strategy():
    """`TPUStrategy` on the TPU of `TPU_NAME` (else the local one); `ValueError` if none."""
    address = os.environ.get("TPU_NAME", "local")
    if address == "local" and not _local_tpu_present():
        raise ValueError(
            "--strategy tpu found no TPU: this machine has no local TPU and TPU_NAME is not "
            "set. Run on a Cloud TPU VM, or set TPU_NAME to a TPU node; on GPUs or CPUs use "
            "--strategy mirrored or multi-worker.")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(f"--strategy tpu could not reach the TPU {address!r}: {error}") from error
    return tf.distribute.TPUStrategy(resolver)


def _local_tpu_present():
    """A TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5+)."""
    return bool(list(Path("/dev").glob("accel*")) or list(Path("/dev/vfio").glob("[0-9]*")))


# --- contexts, and the guards of a model trained under a strategy --------------------------

def in_replica_context():
    """True inside a replicated function (`strategy.run`, a `fit` step) of a strategy."""
    return tf.distribute.has_strategy() and tf.distribute.get_replica_context() is not None


def num_replicas(strategy=None):
    """Replicas that train in sync under `strategy` (default: the current one)."""
    return (strategy or tf.distribute.get_strategy()).num_replicas_in_sync


def in_multi_worker_mode(strategy=None):
    """True under a `MultiWorkerMirroredStrategy` with more than one worker (the condition
    under which Keras reduces metrics across workers)."""
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and compat.in_multi_worker_mode(strategy))


def any_worker(flag, strategy=None):
    """True when `flag` is true on any worker: the same decision on all of them.

    A decision taken from local state (the wall clock, a Ctrl-C) differs between hosts; if one
    worker stopped training alone, the others would wait forever in the next all-reduce. Under
    several workers this is itself an all-reduce (a sum of one scalar), so every worker must call
    it at the same point; elsewhere it is `bool(flag)`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not in_multi_worker_mode(strategy):
        return bool(flag)
    votes = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return bool(strategy.reduce("SUM", votes, axis=None) > 0)


def reducible_logs(logs, strategy):
    """The metric results of one `fit`/`evaluate` step, in a form Keras can reduce.

    Keras 3 (3.15) reduces them across workers of a `MultiWorkerMirroredStrategy` with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388), so `fit` cannot
    run there at all. With a leading axis of length 1 on each worker, that reduction is the
    mean over the workers and a scalar again. Elsewhere `logs` are returned unchanged.
    """
    if not in_multi_worker_mode(strategy):
        return logs
    return tf.nest.map_structure(
        lambda value: tf.reshape(value, (1,)) if value.shape.rank == 0 else value, logs)


def reducible_step_logs(model):
    """Under several workers, makes `model`'s training and evaluation steps return
    `reducible_logs` (`compat.wrap_step_functions`), so that `fit` and `evaluate` run there;
    elsewhere it does nothing. Call it once, in the strategy's scope, after building the model."""
    strategy = model.distribute_strategy
    if in_multi_worker_mode(strategy):
        compat.wrap_step_functions(model, lambda logs: reducible_logs(logs, strategy))


def initialize(model, images, labels=None):
    """`model.initialize(images, labels)` (actnorm's data-dependent initialisation), refused
    in a replica context, where each replica would initialise from its own shard.

    Raises:
        RuntimeError: inside `strategy.run` or a training-step function.
    """
    if in_replica_context():
        raise RuntimeError(
            "model.initialize(batch) was called in a replica context (a strategy.run or "
            "training-step function), where each replica would initialise actnorm from its "
            "own shard and the replicas would diverge. Call model.initialize(batch) inside "
            "strategy.scope(), not in a replica/step function.")
    model.initialize(images, labels)


def uninitialized_actnorms(model):
    """Names of the actnorms of `model` not yet initialised from data (by `initialize` or a
    reload)."""
    return [layer.path for layer in compat.all_sublayers(model)
            if isinstance(layer, Actnorm) and layer.built and not layer.is_initialized]


def check_initialized_for_fit(model):
    """Raises `RuntimeError` if `model` trains on several replicas and an actnorm is
    uninitialised: under a strategy the data-dependent initialisation must run once, before
    `fit`, in the cross-replica context."""
    replicas = num_replicas(model.distribute_strategy)
    if replicas < 2:
        return
    missing = uninitialized_actnorms(model)
    if missing:
        raise RuntimeError(
            f"{len(missing)} actnorm layers are not initialised (e.g. {missing[0]!r}) and "
            f"the model trains on {replicas} replicas. Call model.initialize(batch) inside "
            "strategy.scope() before fit (once, not in a replica/step function), or restore "
            "initialised weights.")


class ActnormCheck(keras.callbacks.Callback):
    """`check_initialized_for_fit` when `fit` starts. Put it last, so that its
    `on_train_begin` runs after any restoring callback's."""

    def on_train_begin(self, logs=None):
        check_initialized_for_fit(self.model)


# --- several workers and one checkpoint folder ---------------------------------------------

def is_chief(strategy=None):
    """True for the worker that owns the outputs (worker 0; the only one outside multi-worker)."""
    return (strategy or tf.distribute.get_strategy()).extended.should_checkpoint


def worker_folder(folder, strategy=None):
    """Where this worker writes: `folder` for the chief, the sibling `<folder>.worker-<index>`
    for the others.

    Every worker must take part in a save (reading synchronised variables, such as metric
    totals, is a collective operation), but only the chief's files count; the others write to
    their own folder, so that no two processes write the same file, and every worker restores
    from the chief's `folder`. A sibling (not a subfolder) lets the chief delete `folder`
    while the others delete theirs.
    """
    strategy = strategy or tf.distribute.get_strategy()
    folder = Path(folder)
    if is_chief(strategy):
        return folder
    return folder.with_name(f"{folder.name}.worker-{strategy.cluster_resolver.task_id}")


class BackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore` for several workers sharing one `backup_dir`.

    Keras's callback has every process write the same files. Here every worker restores from
    `backup_dir`, the chief saves there and the other workers save to (and, with
    `delete_checkpoint`, delete) their `worker_folder(backup_dir)`. With one worker it is
    Keras's callback. As Keras's, it resumes at the start of the epoch after the last save
    (weights and optimizer state, step count included, come from that save), so with
    `save_freq` in steps the rest of an interrupted epoch is repeated. `double_checkpoint=True`
    makes a kill during a save fall back to the previous one. (train.py uses
    `keras_flow.callbacks.Checkpoint` instead, which resumes mid-epoch: docs/training.md.)

    Args:
        backup_dir: folder shared by all workers (a shared file system across hosts).
        **options: those of `keras.callbacks.BackupAndRestore` (`save_freq`,
            `double_checkpoint`, `delete_checkpoint`).
    """

    def __init__(self, backup_dir, **options):
        super().__init__()
        self.backup_dir = str(backup_dir)
        self.options = options
        self.restorer = self.saver = None

    def set_model(self, model):
        super().set_model(model)
        folder = worker_folder(self.backup_dir, model.distribute_strategy)
        self.restorer = keras.callbacks.BackupAndRestore(self.backup_dir, **self.options)
        self.saver = self.restorer
        if folder != Path(self.backup_dir):
            self.saver = keras.callbacks.BackupAndRestore(str(folder), **self.options)
        self.restorer.set_model(model)
        self.saver.set_model(model)

    def on_train_begin(self, logs=None):
        self.restorer.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.saver.on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.saver.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        self.saver.on_train_end(logs)
