"""The runtime of a training run, set once before TensorFlow starts: CPU threads for the batch
shards, the `tf.distribute` strategy, and the dtype policy.

Order matters, and `start_runtime` keeps it: the threads can only be set before TensorFlow's
runtime starts, and a multi-worker strategy must exist before TensorFlow runs any op. The
automatic batch-shard count (`--batch-shards 0`) needs the image size too, so `Runtime`
keeps the cores the threads were set for until the data is loaded
(`Runtime.resolve_batch_shards`).
"""

import contextlib
import dataclasses
import warnings

import keras

from keras_flow import cpu_features
from keras_flow import cpu_threads
from keras_flow import distribute

POLICIES = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
JIT = {"auto": "auto", "on": True, "off": False}


@dataclasses.dataclass
class Runtime:
    """What `start_runtime` set up: the strategy, and the cores automatic sharding may use."""

    strategy: object
    shard_cores: int

    def resolve_batch_shards(self, config, data):
        """`config` with automatic batch shards (0) resolved for `data` on these cores."""
        return resolve_batch_shards(config, data, self.shard_cores)


def start_runtime(config):
    """Threads, the bf16 warning, then the strategy of `config`, in that order."""
    cores = start_threads(config)
    warn_about_precision(config)
    return Runtime(start_strategy(config), cores)


def start_threads(config):
    """Sets TensorFlow's threads for `config.batch_shards` (`keras_flow.cpu_threads`) before
    its runtime starts. Returns the cores that automatic sharding (0) may use: all of them on
    a CPU-only machine with the default strategy, if the threads could still be set (one per
    op, one op per core at once); else 1."""
    if config.batch_shards:
        return cpu_threads.configure(config.batch_shards)
    if config.strategy != "default" or cpu_threads.has_gpu():
        return 1
    cores = cpu_threads.cpu_cores()
    return cores if cpu_threads.set_threads(cores) else 1


def warn_about_precision(config):
    """Warns when `config.mixed_precision` is bf16 on a CPU-only machine (no GPU, no TPU
    strategy) without bfloat16 matrix instructions, where it runs slower than float32
    (`keras_flow.cpu_features`). Returns the warning text, or None."""
    if (config.mixed_precision != "bf16" or config.strategy == "tpu"
            or cpu_threads.has_gpu()):
        return None
    message = cpu_features.bfloat16_warning()
    if message:
        warnings.warn(message, stacklevel=2)
    return message


def native_bfloat16(strategy="default"):
    """`(native, where)`: whether mixed bfloat16 runs natively for `strategy` here (a TPU, a
    GPU, or a CPU with AMX / AVX512-BF16, `keras_flow.cpu_features`), and on what, in words.
    A CPU whose features are unknown counts as not native."""
    if strategy == "tpu":
        return True, "the TPU"
    if cpu_threads.has_gpu():
        return True, "the GPU"
    native = cpu_features.native_bfloat16()
    if native is None:
        return False, "this CPU (features unknown)"
    return native, "this CPU"


def resolve_batch_shards(config, data, cores):
    """`config` with automatic batch shards (0) resolved for `data`'s image size and the
    `cores` that `start_threads` returned (`keras_flow.cpu_threads.auto_batch_shards`)."""
    if config.batch_shards:
        return config
    return dataclasses.replace(config, batch_shards=cpu_threads.auto_batch_shards(
        config.batch_size, data.image_shape, cores))


def start_strategy(config):
    """The `tf.distribute` strategy of `config` (`--cpu-devices` splits the CPU first)."""
    if config.cpu_devices is not None:
        try:
            distribute.split_cpu(config.cpu_devices)
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    return distribute.make_strategy(config.strategy)


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Sets the global dtype policy for `"off"`, `"bf16"` or `"fp16"` (models built inside
    keep it), and restores the previous policy on exit."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
