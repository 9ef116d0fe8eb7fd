"""Test settings: CPU only, fast compiles."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CNN_JAX_COMPILATION_CACHE", "")  # tests do not write ~/.cache

# Tests compile many small programs once each: optimising them costs more than it saves.
# Not `jax_disable_most_optimizations`: its xla_backend_optimization_level=0 miscompiles
# the gradient of conv -> batch norm -> relu -> max pool on XLA:CPU (jax 0.10.2: kernel
# gradients 2-6% off a float64 reference; tests/test_xla_flags.py), so every test that
# trained such a net trained on wrong gradients. Level 1 is exact and compiles almost as
# fast; cheap LLVM passes as that flag had.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1",
    "--xla_llvm_disable_expensive_passes=true"]))

import jax  # noqa: E402,F401  (after XLA_FLAGS: the backend reads them when it starts)


import pytest  # noqa: E402
# Imported now, while this process has one thread: the hypothesis plugin imports it at the
# terminal summary otherwise, and CPython 3.11.7's parser shares its recursion counter
# between threads (gh-106905, fixed in 3.11.8), so that import failed ("AST constructor
# recursion depth mismatch", exit code 1 after every test passed) when a checkpoint
# library's thread parsed code at the same time (tests/test_settings.py's full-disk test
# run alone, 6 of 20 runs).
import hypothesis.internal.observability  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _own_decoded_cache(tmp_path_factory, monkeypatch):
  """Each test its own decoded-data cache: a mock data set must never be cached for another."""
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


