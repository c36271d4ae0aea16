#!/usr/bin/env bash
# keras_flow on one NVIDIA GPU, by default with Keras's JAX backend (the GPU machines lent here
# carry JAX and PyTorch, no TensorFlow; `--backend tensorflow` where TensorFlow is installed):
# training / encode / sample images/s of W1 and of the cifar10 preset in
# float32, bfloat16 and float16, the bits/dim agreement between precisions and the largest
# batch that fits; prints a Markdown table for BENCHMARKS.md. Installs nothing from the network
# and stops starting runs after DEADLINE_S seconds (default 420), so it ends within 8 minutes.
#
#   bash benchmarks/gpu.sh --prepare-wheels   # once, on a machine with network access: the
#                                             # keras wheel and its missing deps into .whl/
#   bash benchmarks/gpu.sh                    # on the GPU machine (with .whl/ beside it)
#   GPU_SMOKE=1 bash benchmarks/gpu.sh        # here, before spending device time: the same
#                                             # runs at toy sizes on the CPU (no wheels)
#   GPU_ROWS=cifar10-fp16,W1-f32-xla-off bash benchmarks/gpu.sh   # only these rows (the names
#                                             # are in benchmarks/gpu_rows.py's ROWS; a lease
#                                             # fits about four)
#   bash benchmarks/gpu.sh --backend tensorflow   # a GPU machine with TensorFlow: XLA on and
#                                             # off are both compiled there (no largest batch:
#                                             # TensorFlow does not report the memory limit)
#
# With the device tool: run(command="GPU_RESULTS=$OUT/gpu.jsonl bash benchmarks/gpu.sh",
# carry=[".whl"], timeout_s=540). GPU_RESULTS, if set, also receives each run's JSON record.
# XLA: JAX compiles every step with XLA; "XLA off" (Keras's jit_compile=False) runs the step op
# by op there, measured for W1 float32 training only (the cifar10 preset would take minutes a
# step); on TensorFlow "XLA off" is a tf.function graph without XLA.
set -uo pipefail
cd "$(dirname "$0")/.."

KERAS_VERSION="${KERAS_VERSION:-3.15.1}"
if [ "${1:-}" = "--prepare-wheels" ]; then
  # keras's requirements that the GPU image lacks (absl-py, h5py, ml-dtypes, numpy, packaging
  # and rich are there): namex and optree. Python 3.12 wheels, as on the GPU image.
  platforms=""
  for n in 28 27 17; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms --platform manylinux2014_x86_64 -d .whl \
    "keras==$KERAS_VERSION" namex optree
fi

BACKEND=jax
if [ "${1:-}" = "--backend" ]; then
  BACKEND="${2:-}"
fi
case "$BACKEND" in
  jax|tensorflow) ;;
  *) echo "gpu.sh: --backend takes jax or tensorflow; got '$BACKEND'." >&2; exit 2 ;;
esac

if [ "$BACKEND" = jax ] && [ -z "${GPU_SMOKE:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/keras_flow_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/keras_flow_site${PYTHONPATH:+:$PYTHONPATH}"
fi
# keras_flow from this checkout: the GPU machine has no editable install of it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND="$BACKEND" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
if ! python3 -c "import keras, $BACKEND" 2>/dev/null; then
  echo "keras or $BACKEND is not importable: for JAX run 'bash benchmarks/gpu.sh" \
       "--prepare-wheels' on a machine with network access and carry .whl/ along." >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
if [ "$BACKEND" = jax ]; then
  python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras',
    keras.__version__, 'float32 matmul precision:', jax.config.jax_default_matmul_precision)"
fi

BACKEND="$BACKEND" DEADLINE_S="${DEADLINE_S:-420}" python3 benchmarks/gpu_rows.py
