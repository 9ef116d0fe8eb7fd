"""Test settings: CPU only, fast compiles."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Tests compile many small programs once each: optimising them costs more than it saves.
jax.config.update("jax_disable_most_optimizations", True)
