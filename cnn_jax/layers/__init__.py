"""Exact CNN layers: convolution, pooling, activations, normalization.

Every layer here follows the textbook definition so that the worked examples of a
CNN course reproduce to the last digit (see tests/test_layers.py). Convolution is
cross-correlation, as in every deep-learning framework.

One file per family (conv, pooling, activations, norm); everything is re-exported
here, so `from cnn_jax import layers; layers.Conv2D(...)` is the way to use them.
"""
import flax.linen as nn

from cnn_jax.layers.activations import ACTIVATIONS, Maxout, get_activation, maxout
from cnn_jax.layers.conv import Conv2D, PaddingLike, conv_output_size, resolve_padding
from cnn_jax.layers.norm import BatchNorm, Dropout, LocalResponseNorm, batch_norm
from cnn_jax.layers.pooling import (AdaptiveAvgPool, AvgPool, Flatten, GlobalAvgPool,
                                    GlobalMaxPool, MaxPool, adaptive_avg_pool,
                                    ceil_mode_padding)

Dense = nn.Dense

__all__ = [
    "conv_output_size", "resolve_padding", "PaddingLike", "Conv2D", "MaxPool", "AvgPool",
    "GlobalAvgPool", "GlobalMaxPool", "Flatten", "AdaptiveAvgPool", "adaptive_avg_pool",
    "ceil_mode_padding", "maxout", "Maxout", "get_activation", "ACTIVATIONS",
    "LocalResponseNorm", "BatchNorm", "batch_norm", "Dropout", "Dense"
]
