"""Losses and classification metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross entropy with optional label smoothing."""
  return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)


def soft_cross_entropy(logits: jax.Array, probs: jax.Array, label_smoothing: float = 0.0
                       ) -> jax.Array:
  """Per-example cross entropy against label distributions `probs` (N, num_classes), e.g.
  mixup / cutmix targets; label smoothing mixes them with the uniform distribution."""
  if label_smoothing:
    probs = optax.smooth_labels(probs, label_smoothing)
  return optax.softmax_cross_entropy(logits, probs)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits (ties resolved as lax.top_k).
  logits (..., num_classes), labels (...): any leading shape (a batch, or a batch of
  positions)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32)
