"""cnn-jax predict on image files, from a trained run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_jax import cli, inference, models, predict
from cnn_jax.data import augment, input_pipeline
from cnn_jax.training import trainer
from helpers import random_split, tiny_config


def test_predict_prints_top5_with_probabilities(tmp_path, capsys):
  train = random_split(256)
  cfg = tiny_config("mlp", num_epochs=3)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"), train, random_split(64, seed=2))
  label = int(train.labels[0])
  img = Image.fromarray(train.images[0][..., 0]).resize((56, 56))  # resized back to 28x28
  img.save(tmp_path / "digit.png")
  assert cli.main(["predict", "--workdir", str(tmp_path / "w"), str(tmp_path / "digit.png")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert "predicted in" in lines[0] and len(lines) == 6
  probs = [float(l.split("%")[0]) for l in lines[1:]]
  assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.0 + 1e-6
  assert lines[1].split(": ")[1] == str(label)  # the bright bar's row is the class
  assert cli.main(["predict", "--workdir", str(tmp_path / "w"), str(tmp_path / "nope.png")]) == 1


def test_weights_are_an_argument_of_the_compiled_program():
  """The weights are passed to the jitted forward pass, not baked into it as constants:
  the program stays small, and new weights of the same shapes reuse it."""
  model = models.get_model("mlp", hidden=(1024,))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
  nbytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(variables))
  assert nbytes > 3_000_000
  p = predict.Predictor(model, variables, augment.make_preprocess_fn(None, (0.5,), (0.5,)),
                        (28, 28, 1))
  x = np.random.RandomState(0).randint(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  lowered = p.probs_fn.lower(p.variables, x)
  assert len(lowered.as_text()) < 100_000  # the weights in the text would be > 6 MB of hex
  before = np.asarray(p.probs(x))
  p.variables = jax.tree_util.tree_map(lambda a: -a, variables)
  after = np.asarray(p.probs(x))
  assert not np.allclose(before, after)
  assert p.probs_fn._cache_size() == 1


def test_predict_pads_digits_as_training_did(tmp_path):
  """LeNet trained on 28x28 digits zero-padded to 32x32: predict pads them too."""
  train = random_split(96)
  cfg = tiny_config("lenet5", num_epochs=1, **{"dataset.image_size": (32, 32)})
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(cfg, workdir, train, random_split(48, seed=2))
  digit = train.images[:1]
  Image.fromarray(digit[0, ..., 0]).save(tmp_path / "digit.png")
  p = inference.load(workdir).predictor
  image = p.load_image(str(tmp_path / "digit.png"))
  np.testing.assert_array_equal(image, digit[0])  # the stored 28x28, not resized to 32
  key = jax.random.key(0)
  want = augment.preprocess_from_config(cfg)(digit, key, False)
  assert want.shape == (1, 32, 32, 1)
  np.testing.assert_array_equal(p.preprocess(image[None], key, False), want)
  model, variables, _ = inference.load(workdir)
  np.testing.assert_allclose(p.probs(image[None]),
                             jax.nn.softmax(model.apply(variables, want, train=False)),
                             rtol=1e-5, atol=1e-6)


def test_stored_image_shape_from_meta_or_fallbacks():
  cfg = tiny_config("lenet5", **{"dataset.image_size": (32, 32)})
  assert predict.stored_image_shape({"data_shape": [28, 28, 1]}, cfg) == (28, 28, 1)
  assert predict.stored_image_shape({}, cfg) == (28, 28, 1)  # mnist's tfds features
  assert predict.stored_image_shape({}, tiny_config("lenet5")) == (32, 32, 1)  # no padding
  cfg.dataset.name = "no_such_data_set"
  with pytest.raises(ValueError, match="data_shape"):
    predict.stored_image_shape({}, cfg)


def test_preprocess_from_config_pads_and_augments_only_in_training():
  cfg = tiny_config("lenet5", **{"dataset.image_size": (32, 32),
                                 "augment": "pad_crop(2)|flip_lr|rotate(10)|color(0.3, 0.3)"})
  pre = augment.preprocess_from_config(cfg)
  images = random_split(8).images
  key = jax.random.key(1)
  evald = np.asarray(pre(images, key, False))
  (mean,), (std,) = input_pipeline.normalization("mnist")
  np.testing.assert_allclose(evald[:, 2:30, 2:30], (images / 255.0 - mean) / std, rtol=1e-5)
  np.testing.assert_allclose(evald[:, :2], -mean / std, rtol=1e-6)  # zero padding
  assert not np.allclose(pre(images, key, True), evald)  # random crop / flip


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
  """(workdir, validation split) of an mlp trained one epoch with eval_flip."""
  workdir = str(tmp_path_factory.mktemp("flip") / "w")
  val = random_split(48, seed=2)
  trainer.train_and_evaluate(tiny_config("mlp", num_epochs=1, eval_flip=True), workdir,
                             random_split(128), val)
  return workdir, val


def test_predict_and_viz_confusion_score_as_evaluation_with_eval_flip(flip_run):
  """A run trained with eval_flip (mirror-averaged logits in evaluation): predict and viz
  confusion give the probabilities / predictions that evaluation scored, not those of the
  unflipped pass (before: the unflipped pass, so their numbers were not the reported ones)."""
  from cnn_jax.training import steps
  from cnn_jax.viz import runs
  workdir, val = flip_run
  p = inference.load(workdir).predictor
  model, variables, config, meta = inference.load_run(workdir)
  probs = np.asarray(p.probs(val.images))
  # The validation loss and accuracy the run logged, from predict's probabilities:
  loss = -np.log(probs[np.arange(len(val.labels)), val.labels]).mean()
  assert loss == pytest.approx(meta["validation"]["loss"], rel=1e-5)
  accuracy = (probs.argmax(-1) == val.labels).mean()
  assert accuracy == pytest.approx(meta["validation"]["accuracy"])
  # ... which are the evaluation forward's, and not the unflipped pass's.
  pre = augment.preprocess_from_config(config)
  flipped, plain = (np.asarray(jax.nn.softmax(steps.eval_logits(
      model.apply, variables, jnp.asarray(val.images), preprocess=pre, flip=f)))
      for f in (True, False))
  np.testing.assert_allclose(probs, flipped, rtol=1e-5, atol=1e-7)
  assert np.abs(plain - flipped).max() > 1e-3
  # viz confusion's matrix: the same predictions, the logged accuracy.
  run = inference.load(workdir)
  result = runs.predict_source(run, val, batch_size=16)
  assert result["accuracy"] == pytest.approx(meta["validation"]["accuracy"])
  want = np.zeros_like(result["matrix"])
  np.add.at(want, (val.labels, flipped.argmax(-1)), 1)
  np.testing.assert_array_equal(result["matrix"], want)


def tampered(workdir, tmp_path, name, edit):
  """A copy of `workdir` whose saved config (every checkpoint's meta) `edit` changed."""
  import json
  import pathlib
  import shutil
  copy = tmp_path / name
  shutil.copytree(workdir, copy)
  for meta in pathlib.Path(copy).glob("*/*/meta/metadata"):
    data = json.loads(meta.read_text())
    edit(data["config"])
    meta.write_text(json.dumps(data))
  return str(copy)


@pytest.mark.parametrize("name,edit,message", [
    ("unknown", lambda c: c["model_kwargs"].update(hiddden=[8]),
     "best/{step}/meta/metadata: model_kwargs.hiddden is not an argument of model 'mlp' "
     "(it takes activation, axis_name, dropout_rate, dtype, hidden, num_classes); fix or remove it"),
    ("mistyped", lambda c: c["model_kwargs"].update(hidden="abc"),
     "best/{step}/meta/metadata: model_kwargs.hidden='abc' does not build model 'mlp' (TypeError:"),
    ("reshaped", lambda c: c["model_kwargs"].update(hidden=[64]),
     "best/{step}/meta/metadata: the saved weights do not fit the model its config builds "
     "(model_kwargs {{'hidden': [64]}}; params/dense1/bias: saved (128,), built (64,)"),
    ("detector", lambda c: c.update(task="detection"),
     "the run in {workdir} is a detection run, not a classification one: use "
     "`cnn-jax detect --workdir {workdir} ...` for it"),
])
def test_a_tampered_or_other_task_run_is_one_line(flip_run, tmp_path, capsys, name, edit, message):
  """predict of a detector's run was a TypeError traceback, and a model_kwargs entry edited
  after training a traceback from inside flax: one line each, naming the key and the file."""
  workdir = tampered(flip_run[0], tmp_path, name, edit)
  step = next(p.name for p in (tmp_path / name / "best").iterdir() if p.name.isdigit())
  image = tmp_path / "x.png"
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  assert cli.main(["predict", "--workdir", workdir, str(image)]) == 1
  err = capsys.readouterr().err
  assert message.format(step=step, workdir=workdir) in err
  assert err.count("\n") == 1 and "Traceback" not in err


def test_predict_applies_the_runs_host_eval_pp(tmp_path):
  """A run with dataset.pp_eval='resize(36)|central_crop(28)' (zoom in by 36/28): predict
  brings a 50x40 file through the same host ops, so its probabilities are the model's on
  the image resized to 36x36 and centre-cropped, computed here with PIL and numpy.
  Ignoring pp_eval (a plain resize to 28x28) gives other probabilities."""
  cfg = tiny_config("mlp", num_epochs=1, **{"dataset.pp_eval": "resize(36)|central_crop(28)",
                                            "dataset.mean": (0.2,), "dataset.std": (0.4,)})
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(cfg, workdir, random_split(64), random_split(48, seed=2))
  photo = np.random.RandomState(4).randint(0, 256, (40, 50), np.uint8)  # H 40, W 50
  photo[12:20, 5:45] = 255
  Image.fromarray(photo).save(tmp_path / "photo.png")

  model, variables, _ = inference.load(workdir)

  def model_probs(image_hw):
    x = (image_hw[None, :, :, None].astype(np.float32) / 255.0 - 0.2) / 0.4
    return np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(x), train=False)))[0]

  zoomed = np.asarray(Image.fromarray(photo).resize((36, 36), Image.BILINEAR))[4:32, 4:32]
  want = model_probs(zoomed)
  p = inference.load(workdir).predictor
  notes = []
  top, _ = p.top_k(str(tmp_path / "photo.png"), k=10, notes=notes)
  got = np.zeros(10)
  for cls, prob in top:
    got[cls] = prob
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert notes == ["50x40 brought to 28x28 (the run's eval pp "
                   "'resize(36)|central_crop(28)')"]
  plain = model_probs(np.asarray(Image.fromarray(photo).resize((28, 28), Image.BILINEAR)))
  assert np.abs(plain - want).max() > 1e-3  # the check can tell the two apart
