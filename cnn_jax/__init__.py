"""cnn_jax: exact CNN layers, a model zoo, and data-parallel training in JAX / Flax linen."""
__version__ = "0.1.0"
