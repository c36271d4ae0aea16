"""Memory that Glow's `remat=True` saves in a training step, measured as process RSS on the CPU.

    python benchmarks/memory.py                  # cifar10 preset, batches 4 and 16 (~15 min)
    python benchmarks/memory.py --preset faces32 --batch-sizes 8 16 --json out.json

For each batch size and `remat` off / on, a fresh process builds the preset's Glow (float32)
and runs a step twice on uniform images in [-0.5, 0.5); the first call traces it. During the
second a thread samples the resident set size (/proc/self/statm, every 2 ms); `step_mib` is
its peak minus the RSS before that call. The step (`--step`):
- `gradients` (default): a traced function computing the gradients of the `add_loss`
  objective w.r.t. every weight, as `fit`'s step does before the optimizer update. Its peak
  is the activations kept for the backward pass plus the weight gradients and transients.
- `fit`: `train_on_batch`, with the Adam update and the metrics. Tracing it takes several
  times longer (17 minutes for cifar10 with remat on 2 busy cores); its figures were within
  a few percent of the gradient step's.
- `eager`: the gradients on an eager `tf.GradientTape` (no tracing), which keeps more than
  the traced function (about 2.4 times as much per step of flow in a check at 16x16x12, width
  512): it overstates what `fit` needs.
`per_image_mib` is the slope of `step_mib` between the batch sizes (fixed costs such as the
weight gradients cancel), printed beside benchmarks/memory_guide.py's analytic estimate.

The children run with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0: its CPU allocator pools freed
memory, so the second call's peak would hide behind the first's) and with glibc's mmap
threshold pinned (MALLOC_MMAP_THRESHOLD_=65536: freed tensors go back to the system at once).

The CPU kernels are not the GPU's (cuDNN workspaces, XLA fusion), so GPU figures differ; the
saving by remat is a property of the graph and carries over.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
CHILD_ENV = dict(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072",
                 TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")


def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_MIB


class PeakSampler(threading.Thread):
    """Samples the RSS every `interval` seconds until `stop()`; `peak` is the largest seen."""

    def __init__(self, interval=0.002):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_mib()
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.peak = max(self.peak, rss_mib())


def objective_gradients(model, images):
    """The gradients of the `add_loss` objective w.r.t. every trainable weight: what `fit`'s
    step computes before the optimizer update."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        model(images, training=True)
        loss = sum(model.losses)
    return tape.gradient(loss, model.trainable_variables)


def make_step(model, how):
    """The function one measured step runs: `how` is "gradients" (a traced function computing
    `objective_gradients`), "fit" (`train_on_batch`: gradients, Adam update, metrics) or
    "eager" (`objective_gradients` without tracing)."""
    import tensorflow as tf

    if how == "fit":
        return model.train_on_batch
    if how == "eager":
        return lambda images: objective_gradients(model, images)
    traced = tf.function(lambda images: objective_gradients(model, images))
    return lambda images: traced(tf.constant(images))


def measure(preset, batch_size, remat, how="gradients"):
    """One configuration, in this process: the figures of the second step."""
    import keras

    import keras_flow

    model = keras_flow.Glow.from_preset(preset, remat=remat)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    keras_flow.optimizers.build_optimizer(model)  # as train.py does
    images = np.random.default_rng(0).uniform(
        -0.5, 0.5, (batch_size,) + model.image_shape).astype("float32")
    step = make_step(model, how)
    started = time.perf_counter()
    step(images)
    first_s = time.perf_counter() - started
    before = rss_mib()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    step(images)
    step_s = time.perf_counter() - started
    sampler.stop()
    return dict(preset=preset, batch_size=batch_size, remat=remat, step=how,
                parameters=model.count_params(), rss_before_mib=round(before, 1),
                step_peak_mib=round(sampler.peak, 1), step_mib=round(sampler.peak - before, 1),
                max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                first_step_s=round(first_s, 1), step_s=round(step_s, 1))


def run_child(preset, batch_size, remat, how):
    command = [sys.executable, __file__, "--child", "--preset", preset, "--step", how,
               "--batch-sizes", str(batch_size)] + (["--remat"] if remat else [])
    result = subprocess.run(command, env=dict(os.environ, **CHILD_ENV), capture_output=True,
                            text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def analytic_mib(preset, remat):
    sys.path.insert(0, str(HERE))
    import memory_guide
    from keras_flow.models import GLOW_PRESETS
    from keras_flow.models.presets import preset_config

    config = preset_config(GLOW_PRESETS, preset, {})
    return memory_guide.glow_activations(config, remat=remat).bytes(4) / 2 ** 20


def slope(rows):
    """MiB per image between the smallest and the largest batch of `rows`."""
    low, high = rows[0], rows[-1]
    if high["batch_size"] == low["batch_size"]:
        return high["step_mib"] / high["batch_size"]
    return (high["step_mib"] - low["step_mib"]) / (high["batch_size"] - low["batch_size"])


def report(preset, rows):
    lines = ["| remat | batch | step (MiB above weights + optimizer) | peak RSS (MiB) "
             "| step time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {'on' if r['remat'] else 'off'} | {r['batch_size']} | {r['step_mib']:,.0f} "
              f"| {r['step_peak_mib']:,.0f} | {r['step_s']} |" for r in rows]
    per_image = {}
    for remat in (False, True):
        mine = sorted((r for r in rows if r["remat"] == remat), key=lambda r: r["batch_size"])
        per_image[remat] = slope(mine)
        lines.append(f"\nremat {'on' if remat else 'off'}: {per_image[remat]:.1f} MiB per image "
                     f"measured, {analytic_mib(preset, remat):.1f} MiB analytic "
                     "(benchmarks/memory_guide.py)")
    largest = max(r["batch_size"] for r in rows)
    off, on = (next(r for r in rows if r["remat"] == m and r["batch_size"] == largest)
               for m in (False, True))
    saved = off["step_mib"] - on["step_mib"]
    lines.append(f"At batch {largest}: remat saves {saved:,.0f} MiB of "
                 f"{off['step_mib']:,.0f} ({1 - on['step_mib'] / off['step_mib']:.0%}) per step; "
                 f"step time x{on['step_s'] / off['step_s']:.2f}.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cifar10", help="a Glow preset (cifar10)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--step", choices=("gradients", "fit", "eager"), default="gradients",
                        help="what a measured step runs (see above)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.preset, args.batch_sizes[0], args.remat, args.step)))
        return
    rows = []
    for batch_size in args.batch_sizes:
        for remat in (False, True):
            rows.append(run_child(args.preset, batch_size, remat, args.step))
            print(json.dumps(rows[-1]), flush=True)
    machine = f"CPU ({platform.processor() or 'unknown'}, {os.cpu_count()} cores)"
    print(f"\nGlow preset {args.preset!r}, float32, step {args.step!r}, {machine}, "
          f"{time.strftime('%Y-%m-%d')}:\n")
    print(report(args.preset, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
