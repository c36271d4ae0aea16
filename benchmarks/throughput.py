"""Training, encoding and sampling throughput of a keras_flow Glow on this machine.

    python benchmarks/throughput.py --workload W1                    # float32, TensorFlow
    python benchmarks/throughput.py --workload W1 --mixed-precision bf16
    python benchmarks/throughput.py --workload W2 --jit on
    python benchmarks/throughput.py --backend jax --workload W1
    python benchmarks/throughput.py --workload W1 --any-batch-size   # as evaluate/export trace
    python benchmarks/throughput.py --image-size 32 --channels 3 --levels 3 --depth 32 \
        --hidden-width 512 --batch-size 64                           # the cifar10 preset

Prints ONE JSON line with the keys of the peers' runners (`train_img_s`, `encode_img_s`,
`sample_img_s`, `params`, `peak_rss_mb`), then the configuration, backend, dtype policy, the
analytic FLOPs per image and each figure as a fraction of the machine's float32 matmul peak.

Method (the peers' one): `--threads` threads (2; with batch shards, the default on CPU, one
intra-op thread per op and `--threads` ops at once, see keras_flow.cpu_threads; with
`--batch-shards 1`, the peers' setting: `--threads` intra-op and inter-op); for each metric two
untimed calls (tracing, compilation), one window sized from the second to last about
`--window-s` seconds, then `--windows` timed windows; the median images/s is reported.
  - train: the model's compiled `train_step` (forward, bits/dim loss, backward, Adam update:
    `--optimizer adam` is keras_flow's `FusedAdam`, train.py's; `keras-adam` is Keras's own;
    learning rate 1e-4 reached after a 500-step linear warm-up, as train.py warms up)
    run by `model.fit` on the same in-memory batch repeated. The timed windows are consecutive
    steps of ONE `fit` call, timed at each step's end by a callback (the peers time a loop of
    steps the same way): a `fit` call's own setup and teardown (0 to 0.9 s per call here)
    would otherwise land in some windows and not in others;
  - encode: a compiled `model.bits_per_dim(x)` (= log_prob plus a constant), i.e. x -> z;
  - sample: a compiled `model.decode(noise)` with noise ~ N(0, 0.7^2) drawn per call.
With `--any-batch-size` (TensorFlow) the three functions are traced for any batch size, as
Keras's `evaluate` and `predict` trace theirs on batches whose last one is partial, and as an
export's endpoints are: the same batch, fed through a function that does not know its size.
"""

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time

WORKLOADS = {  # the reference workloads of the speed issue (and of ../shared/peers)
    "W1": dict(image_size=32, channels=3, levels=3, depth=8, hidden_width=128, batch_size=32),
    "W2": dict(image_size=32, channels=1, levels=3, depth=8, hidden_width=128, batch_size=64),
    "cifar10": dict(image_size=32, channels=3, levels=3, depth=32, hidden_width=512,
                    batch_size=64),
}
DEFAULTS = dict(image_size=32, channels=3, levels=3, depth=8, hidden_width=128, batch_size=32)
POLICIES = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
TEMPERATURE = 0.7
LEARNING_RATE = 1e-4
WARMUP_STEPS = 500  # train.py warms up too (one epoch): at a constant 1e-4 the cifar10
                    # preset's loss spikes at its third step (BENCHMARKS.md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default=None,
                   help="shortcut for the shape flags (explicit flags still override it)")
    p.add_argument("--image-size", type=int, default=None, help="height = width (32)")
    p.add_argument("--channels", type=int, default=None, help="image channels (3)")
    p.add_argument("--levels", type=int, default=None, help="Glow levels L (3)")
    p.add_argument("--depth", type=int, default=None, help="steps per level K (8)")
    p.add_argument("--hidden-width", type=int, default=None, help="coupling width (128)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (32)")
    p.add_argument("--permutation", default="conv1x1", choices=("conv1x1", "shuffle", "reverse"))
    p.add_argument("--lu", default="on", choices=("on", "off"),
                   help="LU-decomposed 1x1 convolution (on)")
    p.add_argument("--coupling", default="affine", choices=("affine", "additive"))
    p.add_argument("--mixed-precision", default="off", choices=sorted(POLICIES),
                   help="off = float32; bf16 = mixed_bfloat16; fp16 = mixed_float16 "
                        "(with loss scaling; GPU)")
    p.add_argument("--jit", default="auto", choices=("auto", "on", "off"),
                   help="XLA for the train/encode/sample functions; auto = Keras's choice "
                        "(off on CPU-only TensorFlow, on with JAX); off on JAX runs op by op")
    p.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax"))
    p.add_argument("--optimizer", default="adam", choices=("adam", "keras-adam", "adamax"),
                   help="adam: keras_flow's FusedAdam (as train.py); keras-adam: "
                        "keras.optimizers.Adam; adamax: keras_flow's GlowAdamax (default: adam)")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads (2): with batch shards, TensorFlow's inter-op threads, "
                        "one intra-op thread each (keras_flow.cpu_threads); without (1), "
                        "intra-op and inter-op threads, the peers' setting")
    p.add_argument("--batch-shards", type=int, default=0,
                   help="Glow(batch_shards=...): 0 = auto, as train.py (TensorFlow on CPU: "
                        "one per thread while each keeps >= 16384 pixels); 1 = off")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per timed window (default: sized to --window-s)")
    p.add_argument("--steps-per-execution", type=int, default=1,
                   help="Keras's compile(steps_per_execution=N): N training steps per call "
                        "of the compiled step, which saves the per-call overhead (callbacks "
                        "then run once per N steps); windows round up to whole calls (1)")
    p.add_argument("--any-batch-size", action="store_true",
                   help="TensorFlow: trace the train, encode and sample functions for any "
                        "batch size (an unknown batch dimension), not the fixed one")
    p.add_argument("--concrete-functions", action="store_true",
                   help="TensorFlow: call the encode and sample functions as concrete "
                        "functions (traced once for the batch's shapes), without "
                        "tf.function's per-call dispatch")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median counts")
    p.add_argument("--window-s", type=float, default=2.0, help="target window length (s)")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling measurement")
    p.add_argument("--no-encode", action="store_true", help="skip the encode measurement")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="float32 matmul peak to use instead of measuring it (GFLOP/s)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    p.add_argument("--check-bpd", action="store_true",
                   help="also report the bits/dim of the batch after the training windows "
                        "under this policy and under float32 with the same weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape = dict(DEFAULTS, **(WORKLOADS[args.workload] if args.workload else {}))
    for key, value in shape.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch_shards < 0:
        p.error(f"--batch-shards must be >= 0 (0: auto, 1: off); got {args.batch_shards}.")
    if args.any_batch_size and args.backend != "tensorflow":
        p.error("--any-batch-size is for TensorFlow (JAX traces every batch size apart).")
    if args.concrete_functions and args.backend != "tensorflow":
        p.error("--concrete-functions is for TensorFlow (jax.jit has no such dispatch).")
    if args.steps_per_execution < 1:
        p.error(f"--steps-per-execution must be >= 1; got {args.steps_per_execution}.")
    return args


def configure_environment(args):
    """Backend, batch shards and thread counts; must run before keras / tensorflow / jax are
    imported (TensorFlow: before its runtime starts)."""
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    one_per_op = False
    if args.backend == "tensorflow":
        from keras_flow import cpu_threads

        one_per_op = args.batch_shards != 1 and not cpu_threads.has_gpu()
        if not args.batch_shards:
            args.batch_shards = cpu_threads.auto_batch_shards(
                args.batch_size, (args.image_size, args.image_size),
                args.threads if one_per_op else 1)
    args.batch_shards = args.batch_shards or 1
    n, intra = str(args.threads), ("1" if one_per_op else str(args.threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = n
    os.environ["TF_NUM_INTRAOP_THREADS"] = intra
    if args.backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)


# --- the analytic FLOP count (convention of ../shared/peers/flops.py) ----------------------
def glow_flops(config):
    """Dense FLOPs per image (1 multiply-add = 2 FLOPs) of the forward pass x -> z, for a
    `config` dict with image_size, channels, levels, depth, hidden_width, coupling and
    permutation (the "config" of the JSON line).

    Per step at level l (C = channels, P = pixels, h = hidden width): the 1x1 conv C*C, the
    coupling network conv3x3(C/2 -> h), conv1x1(h -> h), conv3x3(h -> C) (affine: shift and
    scale; additive: C/2 outputs); per split a conv3x3(C/2 -> C) prior. The edge-padding map
    and the learned top prior act on one constant image per batch and are not counted.
    Training is taken as 3x the forward pass (forward + two backward products).
    """
    side, hidden = config["image_size"], config["hidden_width"]
    dense = 0
    for level in range(1, config["levels"] + 1):
        c = config["channels"] * 2 ** (level + 1)  # after the squeeze (half left the level before)
        pixels = (side >> level) ** 2
        half = c // 2
        out = c if config.get("coupling", "affine") == "affine" else c - half
        mixing = c * c if config.get("permutation", "conv1x1") == "conv1x1" else 0
        step = 2 * pixels * (mixing + 9 * half * hidden + hidden * hidden + 9 * hidden * out)
        dense += config["depth"] * step
        if level < config["levels"]:
            dense += 2 * pixels * 9 * half * c
    return {"forward": dense, "train": 3 * dense}


def accelerator(backend):
    """The accelerator's name (e.g. 'NVIDIA H200'), or None on a CPU-only run."""
    if backend == "jax":
        import jax
        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if (
        gpus) else None


def device_memory_mb(backend):
    """`(peak in use so far, allocator limit)` of the accelerator's memory in MiB, or Nones."""
    if backend == "jax":
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        peak, limit = stats.get("peak_bytes_in_use"), stats.get("bytes_limit")
    else:
        import tensorflow as tf
        if not tf.config.list_physical_devices("GPU"):
            return None, None
        peak, limit = tf.config.experimental.get_memory_info("GPU:0")["peak"], None
    return tuple(None if v is None else round(v / 2 ** 20, 1) for v in (peak, limit))


def measure_peak_gflops(backend, size=2048, reps=5, dtype="float32"):
    """Best `size`^2 matmul GFLOP/s of this backend (threads as configured; on a GPU 8192^2,
    at the backend's default float32 matmul precision, which may use TF32)."""
    from keras import ops
    import numpy as np
    if accelerator(backend):
        size = 8192
    rng = np.random.default_rng(0)
    a = ops.cast(rng.standard_normal((size, size)).astype("float32"), dtype)
    b = ops.cast(rng.standard_normal((size, size)).astype("float32"), dtype)
    if backend == "jax":
        import jax
        mm = jax.jit(lambda u, v: u @ v)
        run = lambda: mm(a, b).block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf
        run = lambda: float(tf.reduce_sum(tf.matmul(a, b)))  # noqa: E731
    run()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = max(best, 2.0 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


# --- timing ----------------------------------------------------------------------------------
def bench(fn, images_per_call, windows=5, window_s=2.0, calls=None):
    """Two untimed calls, then `windows` windows of ~`window_s` s; median images/s, and the
    median process CPU time per image (all threads; less sensitive to a busy machine).

    `fn(n)` runs `n` calls and blocks until they are done; a window is one `fn(calls)`.
    """
    warm = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn(1)
        warm.append(time.perf_counter() - t0)
    if calls is None:
        calls = max(1, int(round(window_s / max(warm[-1], 1e-6))))
    rates, cpu = [], []
    for _ in range(windows):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(calls)
        rates.append(calls * images_per_call / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / (calls * images_per_call))
    return window_summary(rates, cpu, calls, warm[0])


def alternating_rounds(calls, rounds, per_round, warmup=2):
    """Seconds per call of two no-argument functions `calls` (each blocks until its call is
    done): `warmup` untimed calls of each, then `rounds` rounds of `per_round` calls of each,
    the first going first in even rounds and second in odd ones. Returns the two lists of the
    rounds' seconds per call, so that a round's ratio pairs calls made seconds apart."""
    for call in calls:
        for _ in range(warmup):
            call()
    seconds = ([], [])
    for round_ in range(rounds):
        for i in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            started = time.perf_counter()
            for _ in range(per_round):
                calls[i]()
            seconds[i].append((time.perf_counter() - started) / per_round)
    return seconds


def window_summary(rates, cpu, calls, first_call_s):
    """The median images/s and CPU ms per image of the timed windows, and how they ran."""
    return {"img_s": round(statistics.median(rates), 2),
            "windows_img_s": [round(r, 2) for r in rates],
            "cpu_ms_per_img": round(1e3 * statistics.median(cpu), 3),
            "calls_per_window": calls, "first_call_s": round(first_call_s, 3)}


def bench_fit(model, data, images_per_step, windows=5, window_s=2.0, steps=None,
              steps_per_execution=1):
    """`bench` for training: one untimed `fit` call of 2 steps (tracing), then ONE `fit` call
    of 2 warm-up steps plus `windows` windows of `steps` steps (sized to ~`window_s` s from the
    warm-up), each window timed from the end of the step before it to the end of its last
    step. With the model compiled for `steps_per_execution` N > 1, a "step" above is a call
    of N steps (Keras runs the callbacks once per call), and `steps` rounds up to whole calls.
    Returns `bench`'s keys, plus the first and last training loss."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu, self.losses = [], [], []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))  # waits for the step (async backends)
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    t0 = time.perf_counter()
    first = StepClock()
    per_call = int(steps_per_execution)
    model.fit(data(), epochs=1, steps_per_epoch=2 * per_call, verbose=0, callbacks=[first])
    first_call_s = time.perf_counter() - t0
    if steps is None:
        step_s = (first.wall[1] - first.wall[0]) / per_call
        steps = max(1, int(round(window_s / max(step_s, 1e-6))))
    calls = -(-steps // per_call)  # calls of the compiled step per window
    steps = calls * per_call
    warmup = 2
    clock = StepClock()
    model.fit(data(), epochs=1, steps_per_epoch=(warmup + windows * calls) * per_call,
              verbose=0, callbacks=[clock])
    rates, cpu = [], []
    for w in range(windows):
        start, end = warmup - 1 + w * calls, warmup - 1 + (w + 1) * calls
        rates.append(steps * images_per_step / (clock.wall[end] - clock.wall[start]))
        cpu.append((clock.cpu[end] - clock.cpu[start]) / (steps * images_per_step))
    return {**window_summary(rates, cpu, steps, first_call_s),
            "loss_first_last": [round(first.losses[0], 4), round(clock.losses[-1], 4)]}


def compiled(fn, model, backend, jit, any_batch=False, concrete=False):
    """`fn(*arrays)` compiled for the backend, reading the model's current weights; with
    `any_batch` (TensorFlow), traced for any size of the arrays' first axis; with `concrete`
    (TensorFlow), the concrete function of the first call's shapes, called directly."""
    if backend == "jax":
        import jax
        import keras

        def stateless(values, *arrays):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return fn(*arrays)

        jitted = jax.jit(stateless) if jit else stateless
        return lambda *arrays: jitted([v.value for v in model.variables], *arrays)
    import tensorflow as tf
    if not any_batch and not concrete:
        return tf.function(fn, jit_compile=bool(jit))
    traced = []

    def call(*arrays):
        if not traced:
            signature = [tf.TensorSpec((None if any_batch else array.shape[0],)
                                       + tuple(array.shape[1:]), array.dtype)
                         for array in arrays]
            function = tf.function(fn, jit_compile=bool(jit), input_signature=signature)
            traced.append(function.get_concrete_function() if concrete else function)
        return traced[0](*arrays)

    return call


def block(value):
    """Waits for `value` (an array) and returns it as NumPy."""
    from keras import ops
    return ops.convert_to_numpy(value)


def training_data(x, backend, any_batch=False):
    """The batch `x` repeated forever: a prefetched tf.data pipeline or a generator (JAX);
    with `any_batch`, batches whose batch dimension the pipeline leaves unknown."""
    if backend == "tensorflow":
        import tensorflow as tf

        def batches():
            data = tf.data.Dataset.from_tensors(x).repeat()
            if any_batch:  # rebatched without drop_remainder: size unknown to the trace
                data = data.unbatch().batch(len(x))
            return data.prefetch(2)

        return batches

    def forever():
        while True:
            yield (x,)

    return forever


# --- the model -------------------------------------------------------------------------------
def workload_batch(args):
    """The batch every measurement uses: uniform float32 images in [-0.5, 0.5), seeded."""
    import numpy as np

    return (np.random.default_rng(args.seed).random(
        (args.batch_size, args.image_size, args.image_size, args.channels)) - 0.5
            ).astype("float32")


def initialized_glow(args, x, package=None):
    """The configured Glow, from `package` (keras_flow; ab_versions.py passes an exported
    revision), its actnorms initialised on `x`; built under the current dtype policy."""
    if package is None:
        import keras_flow as package
    random.seed(args.seed)  # Keras's unseeded initialisers draw from Python's generator
    model = package.Glow(levels=args.levels, depth=args.depth, hidden_width=args.hidden_width,
                         permutation=args.permutation, lu_decomposed=args.lu == "on",
                         coupling=args.coupling, seed=args.seed,
                         batch_shards=args.batch_shards, image_shape=x.shape[1:])
    model.initialize(x)
    return model


def build_model(args, policy):
    import keras
    from keras_flow.optimizers import build_optimizer

    keras.config.set_dtype_policy(policy)
    x = workload_batch(args)
    model = initialized_glow(args, x)
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    model.compile(optimizer=make_training_optimizer(args.optimizer), jit_compile=jit,
                  steps_per_execution=args.steps_per_execution)
    build_optimizer(model)  # as train.py does: the training step then traces once
    return model, x


def make_training_optimizer(name, warmup_steps=WARMUP_STEPS):
    import keras
    from keras_flow.optimizers import LinearWarmup, make_optimizer
    if name == "keras-adam":
        return keras.optimizers.Adam(LinearWarmup(LEARNING_RATE, warmup_steps))
    return make_optimizer(name, LEARNING_RATE, warmup_steps=warmup_steps)


def count_params(weights):
    return int(sum(math.prod(w.shape) for w in weights))


def bits_per_dim_fn(model, backend, jit, any_batch=False, concrete=False):
    """`model.bits_per_dim`, compiled (encoding: x -> z and the log-determinant)."""
    return compiled(lambda images: model.bits_per_dim(images), model, backend, jit, any_batch,
                    concrete)


def precision_check(model, x, args, jit, encode_fn=None):
    """Bits/dim of the benchmark batch with the trained weights under this run's policy and
    under float32 (a float32 twin with the same weights): the mixed-precision error.
    `encode_fn`: the model's compiled `bits_per_dim`, if there is one already."""
    import keras

    encode_fn = encode_fn or bits_per_dim_fn(model, args.backend, jit)
    policy_bpd = float(block(encode_fn(x)).mean())
    twin, _ = build_model(args, "float32")
    twin.set_weights(model.get_weights())
    float32_bpd = float(block(bits_per_dim_fn(twin, args.backend, jit)(x)).mean())
    keras.config.set_dtype_policy(POLICIES[args.mixed_precision])
    return {"bpd": round(policy_bpd, 5), "bpd_float32": round(float32_bpd, 5),
            "bpd_abs_diff": round(abs(policy_bpd - float32_bpd), 5)}


def main(argv=None):
    args = parse_args(argv)
    configure_environment(args)
    import keras
    import numpy as np
    from keras import ops

    from keras_flow.cpu_features import native_bfloat16

    rss_after_import = current_rss_mb()
    policy = POLICIES[args.mixed_precision]
    peak = args.peak_gflops
    if peak is None and not args.no_peak:
        peak = measure_peak_gflops(args.backend)
    model, x = build_model(args, policy)
    batch = args.batch_size
    jit = bool(model.jit_compile)
    data = training_data(x, args.backend, args.any_batch_size)
    train_stats = bench_fit(model, data, batch, args.windows, args.window_s, args.steps,
                            args.steps_per_execution)
    encode_stats = sample_stats = encode_fn = None
    x_tensor = ops.convert_to_tensor(x)
    if not args.no_encode:
        encode_fn = bits_per_dim_fn(model, args.backend, jit, args.any_batch_size,
                                    args.concrete_functions)

        def encode(n):
            for _ in range(n):
                block(encode_fn(x_tensor))

        encode_stats = bench(encode, batch, args.windows, args.window_s)
    if not args.no_sample:
        decode_fn = compiled(lambda *eps: model.decode(list(eps)), model, args.backend, jit,
                             args.any_batch_size, args.concrete_functions)
        rng = np.random.default_rng(args.seed)

        def sample(n):
            for _ in range(n):
                noise = [(TEMPERATURE * rng.standard_normal((batch,) + tuple(s)))
                         .astype("float32") for s in model.latent_shapes]
                block(decode_fn(*noise))

        sample_stats = bench(sample, batch, args.windows, args.window_s)

    config = dict(image_size=args.image_size, channels=args.channels, levels=args.levels,
                  depth=args.depth, hidden_width=args.hidden_width, batch_size=args.batch_size,
                  permutation=args.permutation, lu=args.lu, coupling=args.coupling)
    flops = glow_flops(config)

    def fraction(stats, kind):
        if stats is None or not peak:
            return None
        return round(stats["img_s"] * flops[kind] / (peak * 1e9), 4)

    device = accelerator(args.backend)
    device_peak_mb, device_limit_mb = device_memory_mb(args.backend)
    record = {
        "peer": "keras_flow",
        "workload": args.workload,
        "params": count_params(model.trainable_weights),
        "train_img_s": train_stats["img_s"],
        "encode_img_s": encode_stats and encode_stats["img_s"],
        "sample_img_s": sample_stats and sample_stats["img_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "device": device or platform.processor() or "cpu",
        "cpu_native_bfloat16": None if device else native_bfloat16(),
        "device_peak_mb": device_peak_mb,
        "device_limit_mb": device_limit_mb,
        "config": config,
        "backend": args.backend,
        "policy": policy,
        "jit_compile": jit,
        "optimizer": args.optimizer,
        "threads": args.threads,
        "batch_shards": args.batch_shards,
        "steps_per_execution": args.steps_per_execution,
        "any_batch_size": args.any_batch_size,
        "concrete_functions": args.concrete_functions,
        "params_all": count_params(model.weights),
        "forward_gflop_per_img": round(flops["forward"] / 1e9, 4),
        "train_gflop_per_img": round(flops["train"] / 1e9, 4),
        "peak_fp32_matmul_gflops": peak,
        "train_fraction_of_peak": fraction(train_stats, "train"),
        "encode_fraction_of_peak": fraction(encode_stats, "forward"),
        "sample_fraction_of_peak": fraction(sample_stats, "forward"),
        "train_detail": train_stats,
        "encode_detail": encode_stats,
        "sample_detail": sample_stats,
        "loss_first_last": train_stats["loss_first_last"],
        "rss_after_import_mb": rss_after_import,
        "versions": {"keras": keras.__version__, "python": platform.python_version()},
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    if args.check_bpd:
        record.update(precision_check(model, x, args, jit, encode_fn))
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def current_rss_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
