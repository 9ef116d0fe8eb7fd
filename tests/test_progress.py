"""The plain progress lines a log file gets instead of a tqdm bar (the trainer's own lines:
tests/test_training.py::test_learns_a_learnable_task)."""
from __future__ import annotations

import io

import pytest

from cnn_jax.training import progress


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"),
                                           (185, "3m05s"), (3600, "1h00m"), (7620, "2h07m")])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_eta_is_the_remaining_images_over_the_speed():
  # 100 of 468 steps done, batch 128, 1280 img/s: 368 steps * 0.1 s = 36.8 s.
  assert progress.eta_seconds(100, 468, 1280.0, 128) == pytest.approx(36.8)
  assert progress.eta_seconds(1, 10, 0.0, 128) is None


def test_lines_are_rate_limited_but_the_epoch_end_always_writes():
  out = io.StringIO()
  lines = progress.ProgressLines(20, 2, 32, enabled=True, stream=out, interval=3600)
  m = {"loss": 0.5, "accuracy": 0.75, "images_per_sec": 320.0}
  lines.update(5, 0, m)
  lines.update(6, 0, m)            # within the interval: nothing
  lines.update(10, 0, m, force=True)  # end of epoch 1
  written = out.getvalue().splitlines()
  assert written == ["step 5/20 | epoch 1/2 | loss 0.5000 | acc 0.7500 | 320 img/s | ETA 2s",
                     "step 10/20 | epoch 1/2 | loss 0.5000 | acc 0.7500 | 320 img/s | ETA 1s"]
  silent = progress.ProgressLines(20, 2, 32, enabled=False, stream=out)
  silent.update(1, 0, m, force=True)
  assert out.getvalue().splitlines() == written
