"""Pack the CIFAR-10 JPEG copy into one compact .npz that travels to a GPU machine.

  python benchmarks/gpu/pack_cifar10.py [--src ../shared/datasets/cifar10_jpeg]
      [--out .gpu_data/cifar10_jpeg.npz] [--format jpeg|pixels] [--measure 2000]

The device tool sends the working tree and the carried paths, 64 MiB in all; the data
folder beside the checkout (../shared) does not travel. CIFAR-10 decoded is 184 MB
(50,000 + 10,000 images of 32x32x3 uint8): no lossless form of the pixels fits (see
--measure and benchmarks/gpu/README.md). The copy here *is* a set of JPEG files, though
(quality 75, ~920 bytes each): their bytes are the data, exactly. `--format jpeg` (the
default) stores every file's bytes back to back (`<split>_jpeg`, uint8) with their
offsets (`<split>_offsets`), so the pack decodes to the very pixels the folder decodes
to (same decoder, PIL); np.savez_compressed then folds the repeated JPEG headers. 52.7 MiB
of files become ~41 MiB. `--format pixels` stores the decoded uint8 arrays instead (for a
machine without a size limit; ~3x larger).

Labels are the sorted class-folder names (airplane .. truck = 0..9, as the original);
images within a class in file-name order (the original batch order).

`--measure N` decodes N train images and prints what each compact form would cost for the
whole set (bytes per image x 60,000), then exits.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zlib

import numpy as np

SPLITS = ("train", "test")
DEFAULT_SRC = os.environ.get("CNN_JAX_CIFAR10_DIR", "../shared/datasets/cifar10_jpeg")


def list_split(root: str, split: str) -> tuple[list[str], np.ndarray, list[str]]:
  d = os.path.join(root, split)
  if not os.path.isdir(d):
    raise SystemExit(f"{d} does not exist: point --src at the CIFAR-10 JPEG folder "
                     "(<src>/{train,test}/<class>/*.jpg)")
  classes = sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
  files, labels = [], []
  for k, c in enumerate(classes):
    names = sorted(f for f in os.listdir(os.path.join(d, c)) if f.lower().endswith((".jpg", ".jpeg")))
    files += [os.path.join(d, c, f) for f in names]
    labels += [k] * len(names)
  return files, np.asarray(labels, np.int32), classes


def read_bytes(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
  blobs = []
  for f in files:
    with open(f, "rb") as fh:
      blobs.append(fh.read())
  offsets = np.zeros(len(blobs) + 1, np.int64)
  offsets[1:] = np.cumsum([len(b) for b in blobs])
  return np.frombuffer(b"".join(blobs), np.uint8), offsets


def decode_jpegs(data: np.ndarray, offsets: np.ndarray, threads: int = 0) -> np.ndarray:
  """uint8 (N, H, W, 3) from bytes packed back to back (PIL, as the image-folder source)."""
  from concurrent.futures import ThreadPoolExecutor
  from PIL import Image
  raw = data.tobytes()

  def one(i):
    with Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])) as im:
      return np.asarray(im.convert("RGB"), np.uint8)

  n = len(offsets) - 1
  with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as ex:
    return np.stack(list(ex.map(one, range(n), chunksize=512)))


def load(path: str) -> dict[str, np.ndarray]:
  """{train,test}_images uint8 NHWC, {train,test}_labels int32, class_names, from a pack."""
  with np.load(path) as z:
    out = {"class_names": [str(c) for c in z["class_names"]]}
    for s in SPLITS:
      if f"{s}_jpeg" in z:
        out[f"{s}_images"] = decode_jpegs(z[f"{s}_jpeg"], z[f"{s}_offsets"])
      else:
        out[f"{s}_images"] = z[f"{s}_images"]
      out[f"{s}_labels"] = z[f"{s}_labels"].astype(np.int32)
  return out


def measure(root: str, n: int) -> dict[str, float]:
  """MiB each compact form would take for all 60,000 images, from the first n train files
  taken in a shuffled order (all classes)."""
  from PIL import Image
  files, _, _ = list_split(root, "train")
  pick = np.random.default_rng(0).permutation(len(files))[:n]
  files = [files[i] for i in pick]
  data, offsets = read_bytes(files)
  pixels = decode_jpegs(data, offsets)
  per = {}
  per["raw uint8"] = pixels.nbytes
  per["np.savez_compressed of the uint8 pixels (zlib)"] = len(zlib.compress(pixels.tobytes(), 6))
  import lzma
  per["lzma (xz -6) of the uint8 pixels"] = len(lzma.compress(pixels.tobytes()))
  for fmt, kw in (("PNG", {"optimize": True}), ("WEBP", {"lossless": True, "quality": 100, "method": 6})):
    total = 0
    for p in pixels:
      b = io.BytesIO()
      Image.fromarray(p).save(b, fmt, **kw)
      total += b.tell()
    per[f"{fmt} lossless, one file per image"] = total
  per["the JPEG files' bytes (exact: the copy itself)"] = int(offsets[-1])
  per["the JPEG bytes, np.savez_compressed (this pack)"] = len(zlib.compress(data.tobytes(), 6))
  return {k: round(v / n * 60000 / 2**20, 1) for k, v in per.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--src", default=DEFAULT_SRC)
  p.add_argument("--out", default=".gpu_data/cifar10_jpeg.npz")
  p.add_argument("--format", choices=("jpeg", "pixels"), default="jpeg")
  p.add_argument("--measure", type=int, default=0, metavar="N",
                 help="estimate each compact form's size from N train images, then exit")
  args = p.parse_args()
  if args.measure:
    for k, v in measure(args.src, args.measure).items():
      print(f"{v:8.1f} MiB  {k}")
    return
  if os.path.exists(args.out):
    raise SystemExit(f"{args.out} exists; remove it first (a pack is never overwritten)")
  t = time.perf_counter()
  arrays: dict[str, np.ndarray] = {}
  names = None
  for s in SPLITS:
    files, labels, classes = list_split(args.src, s)
    if names is not None and classes != names:
      raise SystemExit(f"train and test class folders differ: {names} vs {classes}")
    names = classes
    data, offsets = read_bytes(files)
    if args.format == "jpeg":
      arrays[f"{s}_jpeg"], arrays[f"{s}_offsets"] = data, offsets
    else:
      arrays[f"{s}_images"] = decode_jpegs(data, offsets)
    arrays[f"{s}_labels"] = labels
    print(f"{s}: {len(files)} images, {offsets[-1] / 2**20:.1f} MiB of JPEG", file=sys.stderr)
  arrays["class_names"] = np.asarray(names)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  size = os.path.getsize(args.out)
  print(f"wrote {args.out}: {size / 2**20:.1f} MiB ({args.format}) in "
        f"{time.perf_counter() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
