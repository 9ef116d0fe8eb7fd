"""Every config key with its value and what it means: `cnn-jax config EXP`, `train --help`.

The meaning of each key is written once, as the comment beside it in
`config.base_config()`; this module reads those comments back from the source instead of
keeping a second description that would drift from the code.
"""
from __future__ import annotations

import inspect
import io
import re
import tokenize
from ml_collections import ConfigDict

from cnn_jax import config as config_lib

_ASSIGNMENT = re.compile(r"\s*c\.([\w.]+)\s*=")


def key_comments() -> dict[str, str]:
  """{"optimizer.learning_rate": its comment, ...} from `base_config`'s source.

  A key's text is the block of comment lines right above its assignment (if any) followed
  by the comment on its own line, so "# piecewise: ..." above `decay_epochs` is kept.
  """
  source = inspect.getsource(config_lib.base_config)
  trailing: dict[int, str] = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      trailing[tok.start[0]] = tok.string.lstrip("#").strip()
  comments: dict[str, str] = {}
  block: list[str] = []
  for number, line in enumerate(source.splitlines(), start=1):
    if line.strip().startswith("#"):
      block.append(trailing.get(number, ""))
      continue
    match = _ASSIGNMENT.match(line)
    if match:
      text = " ".join(block + ([trailing[number]] if number in trailing else []))
      comments[match.group(1)] = text.strip()
    block = []
  return comments


def describe(config: ConfigDict | None = None, width: int = 44) -> str:
  """One line per key, `key = value  # comment`, in base_config's order.

  Keys the experiment set to something other than the base default are marked `*`, so
  what an experiment changes stands out among the ~120 keys. (ConfigDict iterates its keys
  sorted; the source order groups them as base_config does.)
  """
  base = config_lib.flatten(config_lib.base_config())
  comments = key_comments()
  order = {key: i for i, key in enumerate(comments)}
  values = sorted(config_lib.flatten(config if config is not None else config_lib.base_config()).items(),
                  key=lambda kv: order.get(kv[0], len(order)))
  lines = []
  for key, value in values:
    changed = key in base and base[key] != value
    assignment = f"{'*' if changed else ' '} {key} = {value!r}"
    comment = comments.get(key, "")
    lines.append(f"{assignment:<{width}s}  # {comment}" if comment else assignment)
  return "\n".join(lines)
