"""`cnn-jax` command line: a thin layer over the trainer and the library.

  cnn-jax train   --config experiments/mnist_lenet.py[:smoke] --workdir W [--config.KEY=VALUE ...]
  cnn-jax config  experiments/mnist_lenet.py[:smoke] [--config.KEY=VALUE ...]   (every key, its value, its meaning)
  cnn-jax eval    --workdir W [--which best|latest] [--split test|validation|SPLIT]
  cnn-jax predict --workdir W IMAGE [IMAGE ...]   (or --model resnet50 --weights resnet50.pth)
  cnn-jax detect  --workdir W IMAGE|DIR [...] --out OUTDIR [--score_threshold 0.3]
  cnn-jax summary MODEL [--input 32x32x1] [--depth 2]
  cnn-jax prepare DATASET --raw_dir DIR [--data_dir DIR]
  cnn-jax models
  cnn-jax viz     curves|filters|activations|confusion|gradcam|augment ... --out FILE.png
                  (cnn-jax viz help: each subcommand's arguments)
  cnn-jax sweep   --config EXP[:variant] --workdir W [--space KEY=loguniform(A,B) ...] [--trials N]
                  [--workers K] [--storage URL] (docs/sweeps.md)
  cnn-jax runs    W|DIR [...] [--csv] [--sort COLUMN] [--filter 'test_accuracy>0.9']   (docs/runs.md)
  cnn-jax kernels PHOTO --kernel sharpen [--kernel edge ...] --out OUTDIR   (--list: names)
  cnn-jax export  --workdir W --format onnx|stablehlo --out FILE [--batch N|dynamic] [--raw]
                  (docs/export.md)
  cnn-jax cache   list | clear (--all | KEY ...)   (the decoded-data cache)
  cnn-jax --version
every command: --help
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from cnn_jax import config_args, local_processes

USAGE = __doc__


def _parse_shape(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a shape like 32x32x1, got {text!r}") from None


TRAIN_USAGE = """cnn-jax train --config EXPERIMENT.py[:VARIANT] --workdir W [--config.KEY=VALUE ...]

Trains the experiment's model and writes checkpoints, metrics.jsonl, TensorBoard logs and
results.json to W. The same command again resumes W from its last checkpoint.
  --config    an experiment file in experiments/ (":smoke" for its seconds-long variant)
  --workdir   where the run lives
  --config.KEY=VALUE   override any key, e.g. --config.optimizer.learning_rate=0.01
  --processes N  run as N processes on this machine's cores (jax.distributed over 127.0.0.1)

`cnn-jax config EXPERIMENT.py[:VARIANT] [--config.KEY=VALUE ...]` prints every key of that
experiment with its value and meaning. The keys and their defaults:
"""


def _wants_help(argv: Sequence[str]) -> bool:
  return any(a in ("-h", "--help", "-help", "--helpfull") for a in argv)


def _train(argv: Sequence[str]) -> int:
  if _wants_help(argv):
    from cnn_jax import config_doc
    print(TRAIN_USAGE + config_doc.describe())
    return 0
  processes, argv = local_processes.split_argument(argv)
  if processes != 1:
    return local_processes.run(argv, processes)
  try:
    config, workdir = config_args.parse(argv, "cnn-jax train", workdir=True)
  except ValueError as e:
    print(f"cnn-jax train: {e}", file=sys.stderr)
    return 2
  from cnn_jax import distributed
  from cnn_jax.training import guards, setup, trainer
  setup.use_compilation_cache(config.get("compilation_cache_dir"))
  setup.request_determinism(config)  # XLA reads its flags when the backend starts
  distributed.initialize(config.get("distributed"))  # before anything touches the devices
  try:
    result = trainer.train_and_evaluate(config, workdir)
  except guards.Preempted as e:
    print(f"cnn-jax train: {e}", file=sys.stderr)
    return e.exit_code
  result.pop("state", None)
  print(json.dumps(result, indent=2))
  return 0


def _config(argv: Sequence[str]) -> int:
  """Every key of an experiment, overrides applied: what `train` would run with."""
  if _wants_help(argv) or not argv:
    print("cnn-jax config EXPERIMENT.py[:VARIANT] [--config.KEY=VALUE ...]\n"
          "Prints every config key with its value and meaning; * marks the keys the "
          "experiment (or an override) sets away from the default.")
    return 0
  if not argv[0].startswith("-"):
    argv = [f"--config={argv[0]}", *argv[1:]]
  try:
    config, _ = config_args.parse(argv, "cnn-jax config", workdir=False)
  except ValueError as e:
    print(f"cnn-jax config: {e}", file=sys.stderr)
    return 2
  from cnn_jax import config_doc
  print(config_doc.describe(config))
  return 0


def _eval(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax eval", description="Evaluate a trained run on a split.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--which", default="best", choices=["best", "latest"],
                 help="best: the best-on-validation checkpoint; latest: the final one")
  p.add_argument("--split", default=None,
                 help="test, validation, or a split such as 'train[:10%%]' (default: the "
                      "run's test split, else its validation split)")
  p.add_argument("--data_dir", default=None)
  args = p.parse_args(argv)
  from cnn_jax import inference
  from cnn_jax.training import evaluation, setup
  import jax
  model, variables, config = inference.load(args.workdir, args.which)
  ds = config.dataset
  # A detection run often has no test split (raccoon: train[:80%] / train[80%:]).
  named = args.split or ("test" if ds.get("test_split") or not ds.get("val_split") else "validation")
  split = {"test": ds.get("test_split") or "test",
           "validation": ds.get("val_split")}.get(named, named)
  if not split:
    raise ValueError(f"the run in {args.workdir} has no validation split; pass --split SPLIT")
  ds.test_split, ds.val_split = split, ""
  if args.data_dir:
    ds.data_dir = args.data_dir
  ds.max_eval_examples = None
  s = setup.setup(config, for_training=False)
  state = evaluation.with_variables(s.compiled.init_state(jax.random.key(0)), variables)
  metrics = evaluation.evaluate(s, state, s.test_data)
  print(json.dumps({"workdir": args.workdir, "which": args.which, "split": split, **metrics},
                   indent=2))
  return 0


def _predict(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax predict",
                              description="Top-k classes of image files, as darknet's classifier prints them.")
  p.add_argument("images", nargs="+", help="image files or folders of images")
  p.add_argument("--workdir", help="a trained run (its best checkpoint)")
  p.add_argument("--model", help="a zoo model, with --weights")
  p.add_argument("--weights", help="torchvision .pth state dict for --model")
  p.add_argument("--labels", help="text file with one class name per line")
  p.add_argument("--top", type=int, default=5)
  args = p.parse_args(argv)
  from cnn_jax import inference, predict  # noqa: PLC0415 - jax, orbax: only for this command
  if bool(args.workdir) == bool(args.model):
    raise ValueError("give either --workdir W or --model NAME --weights FILE")
  predictor = (inference.load(args.workdir, task="classification").predictor if args.workdir
               else predict.from_weights(args.model, args.weights))
  names = predict.read_labels(args.labels) if args.labels else predictor.class_names
  if args.top < 1:
    raise ValueError(f"--top must be a positive number of classes, got {args.top}")
  for path in predict.image_paths(args.images):
    notes: list[str] = []
    top, seconds = predictor.top_k(path, args.top, notes)
    print(f"{path}: predicted in {seconds:.4f} seconds" + (f" ({'; '.join(notes)})" if notes else ""))
    for idx, prob in top:
      name = names[idx] if names and idx < len(names) else str(idx)
      print(f"{100 * prob:6.2f}%: {name}")
  return 0


def _detect(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax detect", description="Boxes found by a trained detector: "
                              "printed, and drawn on each image (PNG in --out).")
  p.add_argument("images", nargs="+", help="image files or folders of images")
  p.add_argument("--workdir", required=True, help="a detection run (task='detection')")
  p.add_argument("--which", default="best", choices=["best", "latest"])
  p.add_argument("--out", default=None, help="folder for the drawn images (none: print only)")
  p.add_argument("--score_threshold", type=float, default=0.3)
  p.add_argument("--overwrite", action="store_true", help="replace drawn images already in --out")
  args = p.parse_args(argv)
  if not 0 <= args.score_threshold <= 1:
    raise ValueError(f"--score_threshold must be in [0, 1], got {args.score_threshold}")
  from cnn_jax.detection import detect
  detector = detect.from_workdir(args.workdir, args.which)
  empty = []  # best score of each image with no box above the threshold
  for r in detect.run(detector, args.images, args.out, args.score_threshold, args.overwrite):
    where = f" -> {r['out']}" if r["out"] else ""
    print(f"{r['path']}: {len(r['detections'])} boxes in {1000 * r['seconds']:.1f} ms{where}")
    for d in r["detections"]:
      x0, y0, x1, y1 = d["box"]
      print(f"  {d['name']:12s} {d['score']:.3f}  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
    if not r["detections"]:
      empty.append(r["best_score"])
  if empty:  # said once, after the list: a weak model is not a broken command
    best = max((b for b in empty if b is not None), default=None)
    print(f"{len(empty)} image(s) had no box scoring {args.score_threshold} or more"
          + (f" (the best scored {best:.3f}); lower --score_threshold to see weaker boxes"
             if best is not None else "; the model found nothing at all there"), file=sys.stderr)
  return 0


def _summary(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax summary", description="Keras-style table of a model.")
  p.add_argument("model")
  p.add_argument("--input", type=_parse_shape, default=None, help="HxWxC, e.g. 32x32x1")
  p.add_argument("--num_classes", type=int, default=None)
  p.add_argument("--depth", type=int, default=1, help="how deep in the module tree to list")
  args = p.parse_args(argv)
  from cnn_jax import summary
  kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
  print(summary.summarize_by_name(args.model, args.input, args.depth, **kwargs).table())
  return 0


def _prepare(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax prepare",
                              description="Prepare a tfds data set offline from its original files.")
  p.add_argument("dataset")
  p.add_argument("--raw_dir", default=None)
  p.add_argument("--data_dir", default=None)
  args = p.parse_args(argv)
  from cnn_jax.data import tfds_data
  builder = tfds_data.prepare(args.dataset, args.data_dir, args.raw_dir)
  print(f"{args.dataset} ready in {builder.data_dir}: "
        + ", ".join(f"{k}={v.num_examples}" for k, v in builder.info.splits.items()))
  return 0


def _models(argv: Sequence[str]) -> int:
  argparse.ArgumentParser("cnn-jax models", description="The zoo: each registered model, its "
                          "input shape and what it is.").parse_args(argv)
  from cnn_jax import models
  for name in models.names():
    spec = models.get_spec(name)
    print(f"{name:20s} {'x'.join(map(str, spec.input_shape)):12s} {spec.description}")
  return 0


def _viz(argv: Sequence[str]) -> int:
  """Pictures of a run: curves, filters, feature maps, confusion, Grad-CAM, augmentation."""
  from cnn_jax.viz import commands  # noqa: PLC0415 - jax, orbax, the training code: only for viz
  return commands.main(argv)


def _sweep(argv: Sequence[str]) -> int:
  """Hyper-parameter sweep: an Optuna study whose trials are ordinary runs (docs/sweeps.md)."""
  from cnn_jax.sweep import command  # noqa: PLC0415 - optuna, jax: only for this command
  return command.main(argv)


def _runs(argv: Sequence[str]) -> int:
  """Runs side by side (cnn_jax/runs.py: reads the work directories, imports no JAX)."""
  from cnn_jax import runs
  return runs.main(argv)


def _export(argv: Sequence[str]) -> int:
  """A trained classifier as an ONNX or StableHLO file, checked against cnn_jax."""
  from cnn_jax import export  # noqa: PLC0415 - jax, onnx: only for this command
  return export.main(list(argv))


def _kernels(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser("cnn-jax kernels", description="Classic image kernels applied "
                              "to a photo: one PNG per kernel and a side-by-side sheet.")
  p.add_argument("photo", nargs="?")
  p.add_argument("--kernel", action="append", default=[], help="a kernel name (repeatable)")
  p.add_argument("--out", help="folder for the PNGs")
  p.add_argument("--padding", default="same", help="same (zeros), edge, reflect, valid, ...")
  p.add_argument("--grey", action="store_true", help="convert the photo to grey first")
  p.add_argument("--overwrite", action="store_true", help="replace PNGs already in --out")
  p.add_argument("--list", action="store_true", help="print the kernel names and stop")
  args = p.parse_args(argv)
  from cnn_jax import kernels
  if args.list:
    for name in kernels.names():
      print(f"{name:16s} {kernels.describe(name)}")
    return 0
  if not args.photo or not args.out:
    raise ValueError("give a PHOTO and --out OUTDIR (and one --kernel NAME or more)")
  from cnn_jax.viz import kernels_sheet
  r = kernels_sheet.kernel_sheet(args.photo, args.kernel, args.out, args.padding, args.grey,
                                 args.overwrite)
  for name, path in r["images"].items():
    print(f"{name:16s} -> {path}")
  print(f"sheet -> {r['sheet']}")
  return 0


def _cache(argv: Sequence[str]) -> int:
  from cnn_jax.data import cache  # noqa: PLC0415 - numpy only, but not for every command
  return cache.command(argv)


COMMANDS = {"train": _train, "config": _config, "eval": _eval, "predict": _predict, "detect": _detect,
            "summary": _summary, "prepare": _prepare, "models": _models, "viz": _viz,
            "kernels": _kernels, "cache": _cache, "sweep": _sweep, "runs": _runs,
            "export": _export}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # orbax warns through absl, for every read-only load, that it set save_interval_steps=0
  # and that the directory is read only: what a read is, not news.
  # A failed save is reported once by the trainer; orbax's worker threads log the same
  # error again, twice, with the whole tensorstore spec.
  # tfds says, once per run, that it decodes with PIL because OpenCV is absent: PIL is
  # what this project decodes with on purpose (data/images.py).
  quiet = ("read_only=True", "is read only", "_SignalingThread.run() raised an exception",
           "OpenCV is not installed")
  logging.getLogger("absl").addFilter(lambda r: not any(q in r.getMessage() for q in quiet))
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  if argv[0] in ("--version", "-V", "version"):
    from importlib import metadata
    print(f"cnn_jax {metadata.version('cnn_jax')} (jax {metadata.version('jax')}, "
          f"flax {metadata.version('flax')}, optax {metadata.version('optax')})")
    return 0
  cmd = COMMANDS.get(argv[0])
  if cmd is None:
    print(f"cnn-jax: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  try:
    return cmd(argv[1:])
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError,
          FloatingPointError, MemoryError) as e:
    if os.environ.get("CNN_JAX_DEBUG"):
      raise
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"cnn-jax {argv[0]}: error: {msg}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
