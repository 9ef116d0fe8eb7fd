"""ResNet-50 training images/s on one GPU: cnn_jax (bf16) vs torchvision (AMP, compiled).

  python benchmarks/gpu/resnet50_vs_torch.py [--batch 256] [--image_size 224]
      [--steps 30] [--rounds 5] [--out_dir benchmarks/results]
  python benchmarks/gpu/resnet50_vs_torch.py --smoke          # CPU, seconds: code paths only

Both sides train ResNet-50 v1.5 (torchvision's layout; 25,557,032 parameters each) on
the same synthetic uint8 224x224 batches already on the device (NHWC bytes; the
uint8 -> float normalisation is inside each step), with NVIDIA's DeepLearningExamples
recipe: SGD momentum 0.875, weight decay 3.0517578125e-05, label smoothing 0.1.

* cnn_jax: `models.get_model("resnet50", dtype=bfloat16)` (bf16 compute, float32
  parameters, BN statistics and loss) trained by the project's own `steps.train_step`,
  `jax.jit` with the state donated.
* PyTorch: `torchvision.models.resnet50()` in channels_last, `torch.autocast(bfloat16)`,
  `torch.compile` (default mode), fused SGD, `cudnn.benchmark`.

Rounds alternate JAX / PyTorch in one process (same GPU, same run); the median round's
images/s is reported with the ratio jax / torch. Compilation and warm-up steps are timed
apart. Anchor: NVIDIA's A100 (80 GB) figure for this recipe, ~2,400-2,500 images/s with
AMP at batch 256 (DeepLearningExamples ResNet-50 v1.5, PyTorch); an H100 should do more.

JAX takes at most `XLA_PYTHON_CLIENT_MEM_FRACTION` (set here to 0.40 unless already set)
of the GPU memory, so that PyTorch's allocator has the rest.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_common  # noqa: E402

import numpy as np  # noqa: E402

NAME = "resnet50_vs_torch"
MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING, LR = 0.875, 3.0517578125e-05, 0.1, 0.256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ANCHOR = {"what": "NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch), AMP, batch 256, "
                  "1x A100 80GB, training images/s", "images_per_sec": [2400, 2500]}


def synthetic_batches(n: int, batch: int, size: int, classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(0)
  return [(rng.integers(0, 256, (batch, size, size, 3), np.uint8),
           rng.integers(0, classes, batch).astype(np.int32)) for _ in range(n)]


def bench_jax(args, host_batches):
  import jax
  from ml_collections import ConfigDict
  from cnn_jax.data import augment
  from cnn_jax.training import optim, steps
  from cnn_jax.training.train_state import create_train_state

  model, dtype, note = gpu_common.get_model(args.model, args.dtype, args.smoke,
                                            num_classes=args.classes)
  tx, _ = optim.make_optimizer(ConfigDict(dict(
      name="momentum", learning_rate=LR, schedule="constant", momentum=MOMENTUM,
      weight_decay=WEIGHT_DECAY)), 1, 1)
  size = args.image_size
  state = jax.jit(lambda r: create_train_state(model, tx, r, (size, size, 3)))(jax.random.key(0))
  params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  pre = augment.make_preprocess_fn(None, MEAN, STD)
  step = jax.jit(functools.partial(steps.train_step, preprocess=pre,
                                   label_smoothing=LABEL_SMOOTHING), donate_argnums=0)
  dev = jax.devices()[0]
  batches = [{"image": jax.device_put(x, dev), "label": jax.device_put(y, dev)}
             for x, y in host_batches]
  jax.block_until_ready(batches)
  t = time.perf_counter()
  state, m = step(state, batches[0])
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t
  for b in batches[1:3]:
    state, m = step(state, b)
  jax.block_until_ready(state)
  holder = {"state": state}

  def run(n):
    st = holder["state"]
    t = time.perf_counter()
    for k in range(n):
      st, m = step(st, batches[k % len(batches)])
    jax.block_until_ready(st)
    dt = time.perf_counter() - t
    holder["state"], holder["loss"] = st, float(m["loss"])
    return dt

  info = {"model": args.model, "parameters": params, "compute_dtype": dtype,
          "first_step_seconds": round(compile_s, 2), "step": "cnn_jax.training.steps.train_step, "
          "jax.jit(donate_argnums=0)"}
  if note:
    info["note"] = note
  return run, info, holder


def torch_resnet(name: str, classes: int):
  """torchvision's model when installed; else the same layout built here (CPU smoke only)."""
  try:
    import torchvision
    return getattr(torchvision.models, name)(num_classes=classes), f"torchvision {torchvision.__version__}"
  except ImportError:
    return _builtin_resnet(name, classes), "builtin copy of torchvision's layout (no torchvision)"


def _builtin_resnet(name: str, classes: int):
  import torch.nn as nn
  layouts = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
             "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True)}
  stages, bottleneck = layouts[name]
  exp = 4 if bottleneck else 1

  class Block(nn.Module):
    def __init__(self, cin, planes, stride):
      super().__init__()
      out = planes * exp
      if bottleneck:  # v1.5: stride on the 3x3
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True), nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out))
      else:
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes))
      self.down = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                   if stride != 1 or cin != out else nn.Identity())
      self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
      return self.relu(self.body(x) + self.down(x))

  layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
  cin = 64
  for i, n in enumerate(stages):
    for j in range(n):
      layers.append(Block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
      cin = 64 * 2**i * exp
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
  return nn.Sequential(*layers)


def bench_torch(args, host_batches):
  import torch
  cuda = torch.cuda.is_available() and not args.smoke
  device = torch.device("cuda" if cuda else "cpu")
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  net, source = torch_resnet(args.model, args.classes)
  net = net.to(device).to(memory_format=torch.channels_last)
  params = sum(p.numel() for p in net.parameters())
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                        **({"fused": True} if cuda else {}))
  crit = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  compiled = args.torch_compile and not args.smoke
  fwd = torch.compile(net) if compiled else net
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
  # NHWC uint8 permuted to NCHW is channels_last in memory: no copy, as the JAX side.
  batches = [(torch.from_numpy(x).to(device).permute(0, 3, 1, 2), torch.from_numpy(y).long().to(device))
             for x, y in host_batches]
  amp_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

  def one(x, y):
    x = (x.float() / 255.0 - mean) / std
    with torch.autocast(device.type, dtype=amp_dtype, enabled=args.dtype == "bfloat16"):
      loss = crit(fwd(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  net.train()
  t = time.perf_counter()
  loss = one(*batches[0])
  sync()
  compile_s = time.perf_counter() - t
  for x, y in batches[1:3]:
    loss = one(x, y)
  sync()
  holder = {}

  def run(n):
    t = time.perf_counter()
    for k in range(n):
      loss = one(*batches[k % len(batches)])
    sync()
    dt = time.perf_counter() - t
    holder["loss"] = float(loss)
    return dt

  info = {"model": f"{args.model} ({source})", "parameters": params, "torch": torch.__version__,
          "device": torch.cuda.get_device_name() if cuda else "cpu",
          "autocast": str(amp_dtype).replace("torch.", "") if args.dtype == "bfloat16" else "off",
          "channels_last": True, "torch_compile": compiled, "fused_sgd": cuda,
          "first_step_seconds": round(compile_s, 2)}
  return run, info, holder


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  gpu_common.add_common_args(p, NAME)
  p.add_argument("--model", default="resnet50", help="a torchvision-layout ResNet (smoke tests "
                 "may pass resnet18)")
  p.add_argument("--batch", type=int, default=None, help="default 256 (--smoke: 4)")
  p.add_argument("--image_size", type=int, default=None, help="default 224 (--smoke: 64)")
  p.add_argument("--steps", type=int, default=None, help="steps per round (default 30; --smoke 2)")
  p.add_argument("--rounds", type=int, default=None, help="default 5 (--smoke 2)")
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
  p.add_argument("--no_torch", action="store_true", help="time cnn_jax alone")
  p.add_argument("--no_torch_compile", dest="torch_compile", action="store_false",
                 help="eager PyTorch (--smoke never compiles)")
  args = p.parse_args()
  started = time.perf_counter()
  smoke = args.smoke
  args.batch = args.batch or (4 if smoke else 256)
  args.image_size = args.image_size or (64 if smoke else 224)
  args.steps = args.steps or (2 if smoke else 30)
  args.rounds = args.rounds or (2 if smoke else 5)
  gpu_common.smoke_platform(smoke)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.40")

  host = synthetic_batches(2 if smoke else 4, args.batch, args.image_size, args.classes)
  runners, infos, holders = {}, {}, {}
  runners["jax"], infos["jax"], holders["jax"] = bench_jax(args, host)
  torch_skipped = None
  if not args.no_torch:
    try:
      runners["torch"], infos["torch"], holders["torch"] = bench_torch(args, host)
    except ImportError as e:
      torch_skipped = f"torch not installed ({e})"
      print(f"warning: {torch_skipped}; cnn_jax alone", file=sys.stderr)
  times = {k: [] for k in runners}
  for _ in range(args.rounds):
    for k, run in runners.items():
      times[k].append(run(args.steps))
  ips = {k: args.batch * args.steps / gpu_common.median(v) for k, v in times.items()}
  figures = {
      "batch": args.batch, "image_size": args.image_size, "steps_per_round": args.steps,
      "rounds": args.rounds, "data": "synthetic uint8 NHWC batches resident on the device",
      "recipe": {"optimizer": "SGD", "learning_rate": LR, "momentum": MOMENTUM,
                 "weight_decay": WEIGHT_DECAY, "label_smoothing": LABEL_SMOOTHING},
      "images_per_sec": {k: round(v, 1) for k, v in ips.items()},
      "images_per_sec_rounds": {k: [round(args.batch * args.steps / t, 1) for t in v]
                                for k, v in times.items()},
      "step_ms": {k: round(1e3 * gpu_common.median(v) / args.steps, 3) for k, v in times.items()},
      "last_loss": {k: h.get("loss") for k, h in holders.items()},
      "jax_side": infos["jax"], "anchor": ANCHOR,
  }
  if "torch" in ips:
    figures["torch_side"] = infos["torch"]
    figures["jax_over_torch"] = round(ips["jax"] / ips["torch"], 3)
  if torch_skipped:
    figures["torch_skipped"] = torch_skipped
  gpu_common.write_results(NAME, figures, args, started)


if __name__ == "__main__":
  main()
