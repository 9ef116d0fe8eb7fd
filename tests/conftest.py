"""Test settings: CPU only, fast compiles."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CNN_JAX_COMPILATION_CACHE", "")  # tests do not write ~/.cache

import jax  # noqa: E402

# Tests compile many small programs once each: optimising them costs more than it saves.
jax.config.update("jax_disable_most_optimizations", True)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _own_decoded_cache(tmp_path_factory, monkeypatch):
  """Each test its own decoded-data cache: a mock data set must never be cached for another."""
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def optimized_xla():
  """Training loops run hundreds of steps: here XLA's optimizations pay for themselves."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
