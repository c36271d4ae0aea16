"""The invertible layers of Glow and RealNVP, one concept per module, one contract (`base.py`)."""

from keras_flow.layers.actnorm import Actnorm
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.batch_norm_flow import BatchNormFlow
from keras_flow.layers.convolutions import EdgePaddedConv2D
from keras_flow.layers.convolutions import WeightNormConv2D
from keras_flow.layers.convolutions import ZeroConv2D
from keras_flow.layers.coupling_networks import GlowCouplingNetwork
from keras_flow.layers.coupling_networks import ResNetCouplingNetwork
from keras_flow.layers.couplings import AdditiveCoupling
from keras_flow.layers.couplings import AffineCoupling
from keras_flow.layers.flow_step import FlowStep
from keras_flow.layers.inv_conv_1x1 import InvConv1x1
from keras_flow.layers.logit import LogitTransform
from keras_flow.layers.permutations import Reverse
from keras_flow.layers.permutations import Shuffle
from keras_flow.layers.priors import Split2D
from keras_flow.layers.priors import TopPrior
from keras_flow.layers.priors import standard_normal_log_prob
from keras_flow.layers.squeeze import Squeeze
