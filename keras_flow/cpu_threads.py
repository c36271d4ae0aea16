"""TensorFlow's thread settings for training on a CPU's cores side by side (`batch_shards`).

TensorFlow runs independent ops on its inter-op threads and splits each op over its intra-op
threads. A flow's step is a long chain of mid-sized ops (convolutions of a few MFLOP, many
elementwise passes), and splitting every one of them over the cores costs synchronisation and
leaves cores idle between ops. `FlowModel(batch_shards=n)` cuts the batch into n slices whose
ops are independent; with one intra-op thread and n inter-op threads each core then runs one
shard's ops start to finish, with one set of weights and one optimizer update per step.
On the project's 2-core machine that trained W1 and W2 (BENCHMARKS.md, runs one after the
other) 1.26-1.39x faster in float32 and bfloat16, and encoded them 1.39-1.88x faster.

    from keras_flow import cpu_threads
    cpu_threads.configure(2)                      # first thing: 1 thread per op, 2 ops at once
    model = keras_flow.Glow(..., batch_shards=2)  # one shard per core

The thread counts are fixed when TensorFlow starts its runtime (the first op, tensor or
dataset of the process), so `configure` must run before that.
"""

import os
import warnings

MIN_PIXELS_PER_SHARD = 16384  # e.g. 16 images of 32x32: smaller shards are overhead-bound


def cpu_cores():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def has_gpu():
    """Whether TensorFlow sees a GPU (listing devices does not start its runtime)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def auto_batch_shards(batch_size, image_shape, cores):
    """One shard per core, as long as each keeps `MIN_PIXELS_PER_SHARD` pixels (batch * H * W);
    fewer for small images or batches, whose ops are too short to gain (1 for the 8x8 digits
    at batch 64, 2 for 32x32 images at batch 32 or 64 on 2 cores)."""
    pixels = int(batch_size) * int(image_shape[0]) * int(image_shape[1])
    return max(1, min(int(cores), pixels // MIN_PIXELS_PER_SHARD))


def set_threads(ops_at_once):
    """For `ops_at_once` > 1: TensorFlow runs each op on one thread and `ops_at_once` ops at
    once (one per batch shard; also the faster setting for a small flow without shards: its
    ops are too short to split). Returns whether those are the thread counts in effect (False
    if TensorFlow's runtime had already started with others, which can no longer change)."""
    import tensorflow as tf

    ops_at_once = int(ops_at_once)
    if ops_at_once <= 1:
        return True
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(1)
        threading.set_inter_op_parallelism_threads(ops_at_once)
    except RuntimeError:
        return (threading.get_intra_op_parallelism_threads(),
                threading.get_inter_op_parallelism_threads()) == (1, ops_at_once)
    return True


def configure(batch_shards):
    """`set_threads(batch_shards)`, with a warning if it came too late (the shards then compute
    the same values, but without a core each). Returns `batch_shards`."""
    if not set_threads(batch_shards):
        warnings.warn(
            f"TensorFlow's runtime had already started, so its threads cannot be set for "
            f"{batch_shards} batch shards (same results, less speed). Configure them before "
            "the first TensorFlow op, or in a fresh process.", stacklevel=2)
    return int(batch_shards)
