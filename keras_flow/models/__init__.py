"""The multi-scale flows: Glow and RealNVP, with their presets."""

from keras_flow.models.flow_model import FlowModel
from keras_flow.models.glow import Glow
from keras_flow.models.presets import GLOW_PRESETS
from keras_flow.models.presets import REALNVP_PRESETS
from keras_flow.models.real_nvp import RealNVP
