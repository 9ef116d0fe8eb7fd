"""The decoded cache's size cap (least recently used entries go) and `cnn-jax cache`."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cnn_jax import cli
from cnn_jax.data import cache
from helpers import random_split


def _fill(directory, name: str, n: int, cache_total_mb: float):
  """One entry of n 64x64x3 images (12 KiB each), cached under `name`."""
  ds = {"cache_dir": str(directory), "cache_total_mb": cache_total_mb}
  return cache.maybe_cached(random_split(n, shape=(64, 64, 3)), {"name": name}, ds)


def test_the_cap_evicts_the_least_recently_used_entry(tmp_path):
  mb = 64 * 64 * 3 * 100 / 2**20  # 1.17 MB of images per 100-image entry
  a = _fill(tmp_path, "a", 100, cache_total_mb=10)
  b = _fill(tmp_path, "b", 100, cache_total_mb=10)
  key_a, key_b = cache.key_of({"name": "a"}), cache.key_of({"name": "b"})
  # Make "a" the older entry, then read it: reading marks it used, so "b" is now older.
  for key, t in ((key_a, 1_000_000), (key_b, 2_000_000)):
    os.utime(tmp_path / key / "meta.json", (t, t))
  _fill(tmp_path, "a", 100, cache_total_mb=10)
  assert [e["key"] for e in cache.entries(str(tmp_path))] == [key_a, key_b]
  # A third entry over a cap of 2.5 entries: the least recently used one ("b") goes.
  c = _fill(tmp_path, "c", 100, cache_total_mb=2.5 * mb + 0.01)
  left = {e["key"] for e in cache.entries(str(tmp_path))}
  assert left == {key_a, cache.key_of({"name": "c"})}
  np.testing.assert_array_equal(b.images, random_split(100, shape=(64, 64, 3)).images), \
      "a split already memory-mapped keeps reading its removed entry"
  assert c.images.shape == (100, 64, 64, 3) and a.images.shape == (100, 64, 64, 3)
  # The entry just written is never evicted, even alone over the cap.
  _fill(tmp_path, "d", 100, cache_total_mb=0.1)
  assert [e["key"] for e in cache.entries(str(tmp_path))] == [cache.key_of({"name": "d"})]


def test_cache_list_and_clear(tmp_path, capsys):
  _fill(tmp_path, "a", 10, cache_total_mb=100)
  _fill(tmp_path, "b", 20, cache_total_mb=100)
  assert cli.main(["cache", "list", "--cache_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 3 and out[-1].startswith("2 entries, 0.4 MB in ")
  assert {line.split()[0] for line in out[:2]} == {cache.key_of({"name": n}) for n in "ab"}
  assert any("20 examples" in line and line.rstrip().endswith(" b") for line in out[:2])
  assert cli.main(["cache", "clear", "--cache_dir", str(tmp_path), "nope"]) == 1
  assert "no cache entry nope" in capsys.readouterr().err
  key_a = cache.key_of({"name": "a"})
  assert cli.main(["cache", "clear", "--cache_dir", str(tmp_path), key_a]) == 0
  assert [e["key"] for e in cache.entries(str(tmp_path))] == [cache.key_of({"name": "b"})]
  assert cli.main(["cache", "clear", "--cache_dir", str(tmp_path), "--all"]) == 0
  assert cache.entries(str(tmp_path)) == [] and not [p for p in os.listdir(tmp_path)
                                                       if not p.startswith(".")]
