"""The one reader of big_vision-style `pp` strings, and the argument checks their ops share.

    split_ops("resize_small(146)|central_crop(size=128)")
      -> [OpCall("resize_small", (146,), {}, ...), OpCall("central_crop", (), {"size": 128}, ...)]

Why it exists: two registries take these strings, `ops` (host-side, numpy, per example,
in grain workers) and `augment` (device-side, jitted, batched). They must read the same
syntax the same way and word their errors alike, so the grammar (ops joined by "|", each
`name` or `name(args)`, the arguments Python literals read with `ast.literal_eval`), the
"unknown op, did you mean" and "bad arguments" errors, and the numeric validators the
op builders call live here, once. The registries keep only their ops.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import math
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence


class OpCall(NamedTuple):
  name: str
  args: tuple
  kwargs: dict
  text: str  # as written, e.g. "rotate(15)"


def _literal(node: ast.expr, name: str, pp: str, what: str) -> Any:
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    raise ValueError(f"op {name!r} in {what} {pp!r}: argument {ast.unparse(node)} is not a "
                     "literal; arguments must be Python literals (numbers, strings, tuples, "
                     "key=value)") from None


def split_ops(pp: str, what: str = "pp string", skip_empty: bool = False) -> list[OpCall]:
  """The ops of `pp`, their arguments evaluated; a blank string has none. An empty op
  ("a||b") is an error unless skip_empty. Errors name the op and quote all of `pp`."""
  calls = []
  for part in pp.split("|") if pp.strip() else []:
    text = part.strip()
    if not text and skip_empty:
      continue
    try:
      node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
      node = None
    if isinstance(node, ast.Name):
      calls.append(OpCall(node.id, (), {}, text))
      continue
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and all(kw.arg for kw in node.keywords)):
      raise ValueError(f"cannot parse {text!r} in {what} {pp!r}: write name or name(args), "
                       "the args Python literals (numbers, tuples, key=value), ops joined "
                       "with '|', e.g. 'rotate(15)|flip_lr'")
    name = node.func.id
    args = tuple(_literal(a, name, pp, what) for a in node.args)
    kwargs = {kw.arg: _literal(kw.value, name, pp, what) for kw in node.keywords}
    calls.append(OpCall(name, args, kwargs, text))
  return calls


def format_op(name: str, args: Sequence = (), kwargs: Optional[dict] = None) -> str:
  """The canonical text of one op, which `split_ops` reads back to the same call."""
  items = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
  return f"{name}({', '.join(items)})" if items else name


def unknown_op_error(name: str, known: Sequence[str], pp: str, what: str) -> ValueError:
  close = difflib.get_close_matches(name, known, n=3)
  hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
  return ValueError(f"unknown op {name!r} in {what} {pp!r}.{hint} Known ops: {', '.join(known)}")


def build(builder: Callable, name: str, args: Sequence, kwargs: dict, pp: str, what: str):
  """builder(*args, **kwargs); a TypeError or ValueError becomes a ValueError that names the
  op, quotes `pp` and shows the op's usage."""
  params = inspect.signature(builder).parameters.values()
  usage = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
  try:
    inspect.signature(builder).bind(*args, **kwargs)
    return builder(*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"bad arguments to op {name!r} in {what} {pp!r}: {e} "
                     f"(usage: {name}({usage}))") from e


# ---- Argument validators: each returns the value, or raises a ValueError naming `what`.

def is_int(x: Any) -> bool:
  """An int (numpy's included), not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
  """A finite real number (numpy's included), not a bool."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _bounds(what: str, v: Any, lo: Any, hi: Any, open_lo: bool = False) -> None:
  if lo is not None and (v < lo or (open_lo and v == lo)):
    raise ValueError(f"{what} must be {'>' if open_lo else '>='} {lo}, got {v!r}")
  if hi is not None and v > hi:
    raise ValueError(f"{what} must be <= {hi}, got {v!r}")


def integer(what: str, v: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
  if not is_int(v):
    raise ValueError(f"{what} must be an integer, got {v!r}")
  _bounds(what, v, lo, hi)
  return int(v)


def number(what: str, v: Any, lo: Optional[float] = None, hi: Optional[float] = None,
           open_lo: bool = False) -> float:
  if not is_number(v):
    raise ValueError(f"{what} must be a finite number, got {v!r}")
  _bounds(what, v, lo, hi, open_lo)
  return float(v)


def number_range(what: str, v: Any, lo: Optional[float] = None, hi: Optional[float] = None,
                 open_lo: bool = False, names: tuple[str, str] = ("lo", "hi")
                 ) -> tuple[float, float]:
  """A (a, b) pair of finite numbers with lo <= a <= b <= hi (lo < a if open_lo)."""
  ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(map(is_number, v))
  if not (ok and v[0] <= v[1] and (lo is None or v[0] > lo or (v[0] == lo and not open_lo))
          and (hi is None or v[1] <= hi)):
    a, b = names
    low = "" if lo is None else f"{lo} {'<' if open_lo else '<='} "
    raise ValueError(f"{what} must be a ({a}, {b}) pair with {low}{a} <= {b}"
                     f"{'' if hi is None else f' <= {hi}'}, got {v!r}")
  return float(v[0]), float(v[1])


def int_pair(what: str, v: Any, lo: int = 1) -> tuple[int, int]:
  """An int or an (h, w) pair of ints >= lo, as (h, w)."""
  pair = (v, v) if is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else ()
  if not (len(pair) == 2 and all(is_int(x) and x >= lo for x in pair)):
    raise ValueError(f"{what} must be an int >= {lo} or an (h, w) pair of them, got {v!r}")
  return int(pair[0]), int(pair[1])
