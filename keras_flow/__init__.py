"""keras_flow: Glow and RealNVP normalizing flows as Keras 3 layers and models.

Backend-neutral core (`layers`, `models`) in `keras.ops`; TensorFlow-only pieces (`data`,
`preprocessing`, `training`, and `export` from `keras_flow.saved_model`) are imported on first
use, so the core also runs on Keras's JAX backend without TensorFlow installed.
"""

import importlib

from keras_flow import layers
from keras_flow import models
from keras_flow import optimizers  # registers GlowAdamax / LinearWarmup for load_model
from keras_flow.models import Glow
from keras_flow.models import RealNVP

__version__ = "0.1.0"

_LAZY_MODULES = ("data", "preprocessing", "training", "callbacks", "distribute")


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"keras_flow.{name}")
    if name == "export":
        return importlib.import_module("keras_flow.saved_model").export
    raise AttributeError(f"module 'keras_flow' has no attribute {name!r}")
