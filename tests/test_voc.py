"""Pascal VOC detection source (cnn_jax.data.voc): tiny hand-made folders, hand-checked boxes."""
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import voc


def xml(filename, width, height, objects, size=True):
  objs = "".join(
      f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
      f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
      f"</bndbox></object>" for name, box, difficult in objects)
  size_xml = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
  return (f"<annotation><folder>images</folder><filename>{filename}</filename>"
          f"{size_xml if size else ''}{objs}</annotation>")


def write(root, stem, width, height, objects, ext=".jpg", ann="annotations", filename=None,
          image=True, image_size=None):
  os.makedirs(root / "images", exist_ok=True)
  os.makedirs(root / ann, exist_ok=True)
  if image:
    w, h = image_size or (width, height)
    Image.new("RGB", (w, h), (200, 50, 100)).save(root / "images" / (stem + ext))
  (root / ann / (stem + ".xml")).write_text(
      xml(stem + ext if filename is None else filename, width, height, objects))


def make_folder(root, n=10):
  """n images: 40x20 (w x h) each with a 'cat' box, every third also a difficult 'dog'."""
  for i in range(n):
    objects = [("cat", (4, 2, 20, 12), False)]
    if i % 3 == 0:
      objects.append(("dog", (0, 0, 40, 20), True))
    write(root, f"img{i:02d}", 40, 20, objects, ext=".png" if i % 2 else ".jpg")
  return root


def test_labels_and_normalized_boxes_hand_checked(tmp_path):
  src = voc.voc_source(str(make_folder(tmp_path)), "train")
  assert src.class_names == ["cat", "dog"] and src.num_classes == 2
  assert len(src) == 10 and src.max_objects == 2
  assert src.labels is None and src.image_shape is None and src.channels == 3
  i = [os.path.basename(f) for f in src.xml_files].index("img00.xml")
  image, target = src[i]
  assert image.shape == (20, 40, 3) and image.dtype == np.uint8
  np.testing.assert_allclose(target["boxes"], [[0.1, 0.1, 0.5, 0.6], [0, 0, 1, 1]])
  assert target["boxes"].dtype == np.float32
  assert target["labels"].tolist() == [0, 1] and target["labels"].dtype == np.int32
  assert target["difficult"].tolist() == [False, True]
  j = [os.path.basename(f) for f in src.xml_files].index("img01.xml")
  assert src[j][1]["labels"].tolist() == [0]
  assert src.image_files[j].endswith("img01.png")
  from cnn_jax.detection.task import box_sizes  # what the k-means anchors read
  sizes = box_sizes(src)
  assert sizes.shape == (14, 2)
  np.testing.assert_allclose(sorted(map(tuple, sizes.tolist())),
                             [(0.4, 0.5)] * 10 + [(1.0, 1.0)] * 4, rtol=1e-6)


def test_split_slices_are_disjoint_cover_and_are_seeded(tmp_path):
  root = str(make_folder(tmp_path, n=20))
  train, held = voc.voc_source(root, "train[:80%]"), voc.voc_source(root, "train[80%:]")
  assert (len(train), len(held)) == (16, 4)
  assert not set(train.xml_files) & set(held.xml_files)
  assert set(train.xml_files) | set(held.xml_files) == set(voc.voc_source(root, "all").xml_files)
  assert voc.voc_source(root, "train[:80%]").xml_files == train.xml_files
  assert voc.voc_source(root, "train[:80%]", split_seed=1).xml_files != train.xml_files
  assert held.class_names == train.class_names == ["cat", "dog"]
  assert len(voc.voc_source(root, "train[:80%]", max_examples=5)) == 5
  assert voc.voc_source(root, "train[:80%]", max_examples=5).xml_files == train.xml_files[:5]
  with pytest.raises(ValueError, match="'train' or 'all'"):
    voc.voc_source(root, "test")


def test_class_names_over_all_files_not_only_the_split(tmp_path):
  for i in range(10):
    write(tmp_path, f"a{i}", 10, 10, [("zebra" if i == 0 else "ant", (1, 1, 5, 5), False)])
  for split in ("train[:50%]", "train[50%:]"):
    assert voc.voc_source(str(tmp_path), split).class_names == ["ant", "zebra"]
  given = voc.voc_source(str(tmp_path), "train", class_names=["zebra", "ant"])
  assert sorted(given.target(i)["labels"][0] for i in range(10)) == [0] + [1] * 9
  with pytest.raises(ValueError, match="not in class_names"):
    voc.voc_source(str(tmp_path), "train", class_names=["ant"])


@pytest.mark.parametrize("ann", ["Annotations", "annots", "xml"])
def test_annotation_dir_discovery(tmp_path, ann):
  write(tmp_path, "x", 10, 10, [("a", (1, 1, 5, 5), False)], ann=ann)
  assert voc.voc_source(str(tmp_path), "train").xml_files[0].endswith(f"{ann}/x.xml")


def test_no_annotation_dir_lists_what_was_looked_for(tmp_path):
  os.makedirs(tmp_path / "images")
  with pytest.raises(FileNotFoundError, match="annotations, Annotations, annots, xml"):
    voc.voc_source(str(tmp_path), "train")


def test_box_outside_image_names_the_file_and_small_overhang_is_clipped(tmp_path):
  write(tmp_path, "ok", 40, 20, [("a", (-0.5, 0, 40.8, 20), False)])
  np.testing.assert_allclose(voc.voc_source(str(tmp_path), "train").target(0)["boxes"],
                             [[0, 0, 1, 1]])
  write(tmp_path, "bad", 40, 20, [("a", (4, 2, 43, 12), False)])
  with pytest.raises(ValueError, match=r"bad\.xml.*outside"):
    voc.voc_source(str(tmp_path), "train")


def test_empty_box_is_an_error(tmp_path):
  write(tmp_path, "flat", 40, 20, [("a", (10, 2, 10, 12), False)])
  with pytest.raises(ValueError, match=r"flat\.xml.*xmax > xmin"):
    voc.voc_source(str(tmp_path), "train")


def test_malformed_xml_and_missing_size(tmp_path):
  os.makedirs(tmp_path / "annotations")
  (tmp_path / "annotations" / "broken.xml").write_text("<annotation><size>")
  with pytest.raises(ValueError, match=r"broken\.xml: malformed XML"):
    voc.parse_voc_xml(str(tmp_path / "annotations" / "broken.xml"))
  (tmp_path / "annotations" / "nosize.xml").write_text(xml("n.jpg", 1, 1, [], size=False))
  with pytest.raises(ValueError, match=r"nosize\.xml: no <size>"):
    voc.parse_voc_xml(str(tmp_path / "annotations" / "nosize.xml"))


def test_missing_image_names_xml_and_tried_paths(tmp_path):
  write(tmp_path, "gone", 10, 10, [("a", (1, 1, 5, 5), False)], image=False)
  with pytest.raises(FileNotFoundError, match=r"gone\.xml.*gone\.jpg.*gone\.jpeg.*gone\.png"):
    voc.voc_source(str(tmp_path), "train")


def test_stale_filename_falls_back_to_the_xml_stem(tmp_path):
  write(tmp_path, "moved", 10, 10, [("a", (1, 1, 5, 5), False)], ext=".png",
        filename="/old/place/IMG_001.JPG")
  assert voc.voc_source(str(tmp_path), "train").image_files[0].endswith("images/moved.png")


def test_empty_annotations_skipped_and_counted_or_kept(tmp_path, caplog):
  make_folder(tmp_path, n=3)
  write(tmp_path, "nothing", 40, 20, [])
  with caplog.at_level(logging.INFO, logger="cnn_jax"):
    src = voc.voc_source(str(tmp_path), "train")
  assert len(src) == 3 and src.num_skipped_empty == 1
  assert "no objects" in caplog.text
  kept = voc.voc_source(str(tmp_path), "train", skip_empty=False)
  assert len(kept) == 4 and kept.num_skipped_empty == 0
  i = [os.path.basename(f) for f in kept.xml_files].index("nothing.xml")
  image, target = kept[i]
  assert image.shape == (20, 40, 3) and target["boxes"].shape == (0, 4)
  assert target["labels"].shape == target["difficult"].shape == (0,)


def test_pickle_round_trip_gives_the_same_items(tmp_path):
  src = voc.voc_source(str(make_folder(tmp_path)), "train[:60%]")
  back = pickle.loads(pickle.dumps(src))
  assert len(back) == len(src) and back.class_names == src.class_names
  for i in range(len(src)):
    (a, ta), (b, tb) = src[i], back[i]
    np.testing.assert_array_equal(a, b)
    for k in ta:
      np.testing.assert_array_equal(ta[k], tb[k])
  sub = src.subset([2, 0])
  assert sub.xml_files == [src.xml_files[2], src.xml_files[0]]
  np.testing.assert_array_equal(sub.target(0)["boxes"], src.target(2)["boxes"])


def test_image_size_disagreeing_with_xml_is_refused_when_the_source_is_built(tmp_path):
  """It used to fail only when the image was decoded: at the first batch, 40 s into a run
  (the old test read src[0] right away, so it could not tell when the error came)."""
  make_folder(tmp_path, n=3)
  write(tmp_path, "liar", 40, 20, [("cat", (1, 1, 5, 5), False)], image_size=(20, 40))
  write(tmp_path, "tall", 40, 20, [("cat", (1, 1, 5, 5), False)], image_size=(40, 21))
  with pytest.raises(ValueError) as e:
    voc.voc_source(str(tmp_path), "train")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("2 image(s) differ in size from their annotation's "
                                             "<size>")
  assert (f"{tmp_path / 'images' / 'liar.jpg'} is 20x40 (width x height) but "
          f"{tmp_path / 'annotations' / 'liar.xml'} says 40x20") in msg
  assert f"{tmp_path / 'images' / 'tall.jpg'} is 40x21" in msg


SHARED = os.environ.get("CNN_JAX_SHARED_DATASETS",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "raccoon")),
                    reason="raccoon VOC folder not in $CNN_JAX_SHARED_DATASETS")
def test_real_raccoon_folder():
  src = voc.voc_source(os.path.join(SHARED, "raccoon"), "train")
  assert len(src) == 200 and src.class_names == ["raccoon"]
  image, target = src[0]
  assert image.ndim == 3 and target["labels"].tolist() == [0] * len(target["labels"])
  assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
