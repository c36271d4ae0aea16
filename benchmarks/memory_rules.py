"""The memory rules that benchmarks/memory_guide.py (per preset, computed) and
benchmarks/gpu_rows.py (gpu.sh's largest batch, from a measured one) share. Pure Python:
gpu.sh runs it on machines with no TensorFlow, before Keras is imported.

A training step holds a fixed part (float32 weights, their gradients, the two Adam/Adamax
slots: 16 bytes per trainable parameter and 4 per non-trainable one; mixed precision keeps
float32 weights) plus activations per image; `USABLE` of the device memory may be filled, the
rest is left to the CUDA context, workspaces and fragmentation.
"""

GIB = 2 ** 30
USABLE = 0.9  # of the device memory; the rest: CUDA context, workspaces, fragmentation


def fixed_bytes(total, trainable, ema=False, remat=False):
    """Weights (float32) + gradients + two optimizer slots (+ EMA, + remat's extra set) of the
    trainable ones."""
    return 4 * total + (12 + 4 * ema + 4 * remat) * trainable


def fitting_batch(device_bytes, fixed, per_image):
    """The most images whose activations (`per_image` bytes each) fit beside `fixed` bytes in
    `USABLE` of `device_bytes`."""
    free = USABLE * device_bytes - fixed
    return max(0, int(free // per_image))
