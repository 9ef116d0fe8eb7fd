"""cnn_jax: exact CNN layers, a model zoo, and data-parallel training in JAX / Flax linen."""
__version__ = "0.1.0"


__all__ = ["load", "__version__"]


def __dir__() -> list[str]:
  return sorted(set(globals()) | {"load"})


def __getattr__(name):
  # `cnn_jax.load(workdir)` without importing orbax / jax on `import cnn_jax`.
  if name == "load":
    from cnn_jax.inference import load
    return load
  raise AttributeError(f"module 'cnn_jax' has no attribute {name!r}")
