"""`cnn-jax viz curves|filters|activations|confusion|gradcam|augment ...` (argument parsing).

`cnn_jax.cli` dispatches here; each subcommand prints what it wrote (and, for confusion,
the most confused pairs). Errors are ValueError / FileNotFoundError / FileExistsError
with a message, which the CLI prints without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


from cnn_jax import config_args, inference
from cnn_jax.viz import activations, augment, confusion, curves, filters, gradcam, runs

USAGE = """cnn-jax viz SUBCOMMAND ...
  curves      --workdir W [W2 ...] [--x step|epoch|time] --out curves.png
              (a sweep's runs: --workdir W/trials/*; the legend names the differing keys)
  filters     --workdir W [--layer conv2] [--max_tiles 64] --out filters.png
  activations --workdir W IMAGE [--max_maps 16] --out maps.png
  confusion   --workdir W [--split test|validation|SPLIT] --out confusion.png
  gradcam     --workdir W IMAGE [--class NAME|INDEX] [--layer conv2] --out cam.png
  augment     --config C[:arg] [--config.KEY=VALUE ...] [--num 16] --out augment.png
every subcommand: [--overwrite] to replace --out; runs: [--which best|latest]"""


def _parser(name: str, run: bool = True) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(f"cnn-jax viz {name}")
  if run:
    p.add_argument("--workdir", required=True)
    p.add_argument("--which", default="best", choices=["best", "latest"])
  p.add_argument("--out", required=True, help="the PNG to write")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  return p


def _curves(argv: Sequence[str]) -> int:
  p = _parser("curves", run=False)
  p.add_argument("--workdir", required=True, nargs="+", help="one or more runs to overlay")
  p.add_argument("--x", default="step", choices=curves.X_AXES,
                 help="step, epoch, or the run's wall time")
  a = p.parse_args(argv)
  r = curves.plot_curves(a.workdir, a.out, a.overwrite, a.x)
  print(f"{r['path']}: {', '.join(r['panels'])} of {len(a.workdir)} run(s) by {a.x}")
  return 0


def _filters(argv: Sequence[str]) -> int:
  p = _parser("filters")
  p.add_argument("--layer", default=None, help="a conv's param path (default: the first conv)")
  p.add_argument("--max_tiles", type=int, default=64)
  a = p.parse_args(argv)
  r = filters.plot_filters(inference.load(a.workdir, a.which), a.out, a.layer, a.max_tiles,
                           a.overwrite)
  print(f"{r['path']}: {r['layer']} kernel {'x'.join(map(str, r['kernel_shape']))} as "
        f"{r['rows']}x{r['cols']} {r['layout']} tiles, each min-max normalised")
  return 0


def _activations(argv: Sequence[str]) -> int:
  p = _parser("activations")
  p.add_argument("image")
  p.add_argument("--max_maps", type=int, default=16)
  a = p.parse_args(argv)
  run = inference.load(a.workdir, a.which)
  image = run.predictor.load_image(a.image)
  r = activations.plot_activations(run, image, a.out, a.max_maps, a.overwrite,
                                   title=os.path.basename(a.image))
  print(f"{r['path']}: " + ", ".join(f"{s} {'x'.join(map(str, sh))}" for s, _, sh in r["stages"]))
  return 0


def _confusion(argv: Sequence[str]) -> int:
  p = _parser("confusion")
  p.add_argument("--split", default="test",
                 help="test, validation, or a split such as 'train[:10%%]'")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--max_examples", type=int, default=16, help="misclassified examples shown")
  a = p.parse_args(argv)
  run = inference.load(a.workdir, a.which)
  spec, source = runs.split_source(run, a.split, a.data_dir)
  result = runs.predict_source(run, source, max_examples=a.max_examples)
  r = confusion.plot_confusion(run, result, a.out, a.overwrite)
  print(f"{r['path']}: {spec}, {result['num_examples']} examples, accuracy "
        f"{result['accuracy']:.4f}")
  print("most confused (true -> predicted: count):" if r["pairs"] else "no confusions")
  for t, pr, c in r["pairs"]:
    print(f"  {t} -> {pr}: {c}")
  return 0


def _gradcam(argv: Sequence[str]) -> int:
  p = _parser("gradcam")
  p.add_argument("image")
  p.add_argument("--class", dest="cls", default=None,
                 help="class name or index (default: the predicted one)")
  p.add_argument("--layer", default=None, help="a module's path, or PATH:input (default: the last "
                 "rectified feature map, e.g. a ResNet's last block)")
  a = p.parse_args(argv)
  run = inference.load(a.workdir, a.which)
  r = gradcam.plot_gradcam(run, run.predictor.load_image(a.image), a.out, a.cls, a.layer,
                           a.overwrite)
  print(f"{r['path']}: Grad-CAM of {r['name']} (p={r['prob']:.3f}) on {r['layer']}")
  return 0


def _augment(argv: Sequence[str]) -> int:
  p = _parser("augment", run=False)
  p.add_argument("--num", type=int, default=16)
  a, rest = p.parse_known_args(argv)
  config, _ = config_args.parse(rest, "cnn-jax viz augment", workdir=False)
  r = augment.plot_augment(config, a.out, a.num, overwrite=a.overwrite)
  print(f"{r['path']}: {r['shape'][0]} training images of {'x'.join(map(str, r['shape'][1:]))}")
  return 0


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "curves": _curves, "filters": _filters, "activations": _activations,
    "confusion": _confusion, "gradcam": _gradcam, "augment": _augment}


def main(argv: Sequence[str]) -> int:
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  cmd = SUBCOMMANDS.get(argv[0])
  if cmd is None:
    print(f"cnn-jax viz: unknown subcommand {argv[0]!r}; subcommands: {', '.join(SUBCOMMANDS)}",
          file=sys.stderr)
    return 2
  return cmd(argv[1:])
