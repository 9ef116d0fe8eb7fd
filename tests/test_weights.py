"""Weight importers: Keras applications and torchvision state dicts give the same logits.

torchvision is not needed: the reference networks below are plain torch.nn with
torchvision's exact module names, so their state_dict keys are torchvision's. Every
batch-norm layer gets random statistics and affine parameters, so the BN mapping is
really exercised, and inputs are small (64-163 px) to keep this fast on a CPU.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.data.input_pipeline import IMAGENET_MEAN_STD
from cnn_jax.weights import check_variables, fc_from_chw


def assert_logits_close(ours, ref, rtol=1e-4):
  """max |ours - ref| <= rtol * max |ref|: random nets can have tiny logits (VGG's are
  ~1e-2), so the bound is relative to their scale (1e-4 absolute at scale 1)."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = float(np.abs(ref).max())
  err = float(np.abs(ours - ref).max())
  print(f"parity: max |diff| {err:.3g}, max |logit| {scale:.3g}, relative {err / scale:.2g}")
  assert scale > 0 and np.std(ref) > 0
  assert err <= rtol * scale, f"max |diff| {err:.3g} at logit scale {scale:.3g}"
  return err


def apply_jit(model, variables, x):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))


def test_fc_from_chw_matches_flatten_orders():
  rs = np.random.RandomState(0)
  fmap = rs.normal(size=(3, 2, 4)).astype(np.float32)  # (C, H, W)
  w = rs.normal(size=(24, 5)).astype(np.float32)       # torch order rows
  np.testing.assert_allclose(fmap.reshape(-1) @ w,
                             fmap.transpose(1, 2, 0).reshape(-1) @ fc_from_chw(w, 3, 2, 4),
                             rtol=1e-5)


# ======================================================================== Keras
@pytest.fixture(scope="module")
def keras():
  pytest.importorskip("tensorflow")
  import keras
  return keras


def randomize_keras_bn(keras, model, seed=0):
  rs = np.random.RandomState(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      g, b, m, v = layer.get_weights()
      layer.set_weights([rs.uniform(0.5, 1.5, g.shape), rs.normal(0, 0.1, b.shape),
                         rs.normal(0, 0.1, m.shape), rs.uniform(0.5, 1.5, v.shape)])


def test_keras_resnet50_parity(keras):
  from cnn_jax.weights import keras_import
  km = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10,
                                   classifier_activation=None)
  randomize_keras_bn(keras, km)
  variables = keras_import.resnet50_from_keras(km)
  model = models.get_model("resnet50_keras", num_classes=10)
  check_variables(model, variables, (64, 64, 3))
  x = np.random.RandomState(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  assert_logits_close(apply_jit(model, variables, x), km(x, training=False).numpy())
  # Keras counts BN statistics as (non-trainable) parameters; so does our summary.
  from cnn_jax import summary
  s = summary.summarize_by_name("resnet50_keras", (64, 64, 3), num_classes=10)
  assert s.total_params == km.count_params()


def test_keras_vgg16_parity(keras):
  from cnn_jax.weights import keras_import
  km = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=10,
                                classifier_activation=None)
  variables = keras_import.vgg_from_keras(km)
  # At 64x64 the last map is 2x2x512, so fc1 tests the flatten order; Keras has no
  # adaptive pool, hence avgpool_size=None.
  model = models.get_model("vgg16", num_classes=10, avgpool_size=None)
  check_variables(model, variables, (64, 64, 3))
  x = 50 * np.random.RandomState(2).normal(size=(2, 64, 64, 3)).astype(np.float32)  # caffe-like
  assert_logits_close(apply_jit(model, variables, x), km(x, training=False).numpy())


# ======================================================================== torch
@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  torch.set_num_threads(2)
  return torch


def torch_refs(torch):
  """Minimal torchvision look-alikes: same modules, same names, same forward."""
  nn = torch.nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU()
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = downsample

    def forward(self, x):
      idt = x if self.downsample is None else self.downsample(x)
      y = self.relu(self.bn1(self.conv1(x)))
      return self.relu(self.bn2(self.conv2(y)) + idt)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      idt = x if self.downsample is None else self.downsample(x)
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      return self.relu(self.bn3(self.conv3(y)) + idt)

  class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
      super().__init__()
      self.inplanes = 64
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      for i, n in enumerate(layers):
        setattr(self, f"layer{i + 1}", self._make(block, 64 * 2**i, n, 1 if i == 0 else 2))
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make(self, block, planes, n, stride):
      down = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                                       bias=False), nn.BatchNorm2d(planes * block.expansion))
      blocks = [block(self.inplanes, planes, stride, down)]
      self.inplanes = planes * block.expansion
      blocks += [block(self.inplanes, planes) for _ in range(1, n)]
      return nn.Sequential(*blocks)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  class AlexNet(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
          nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
          nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  class VGG(nn.Module):
    def __init__(self, cfg, batch_norm, num_classes=1000):
      super().__init__()
      mods, c = [], 3
      for v in cfg:
        if v == "M":
          mods.append(nn.MaxPool2d(2, 2))
        else:
          mods.append(nn.Conv2d(c, v, 3, padding=1))
          mods += [nn.BatchNorm2d(v), nn.ReLU()] if batch_norm else [nn.ReLU()]
          c = v
      self.features = nn.Sequential(*mods)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(),
          nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return torch.relu(self.bn(self.conv(x)))

  class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
      super().__init__()
      self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
      self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1),
                                   BasicConv2d(c3r, c3, kernel_size=3, padding=1))
      self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1),
                                   BasicConv2d(c5r, c5, kernel_size=3, padding=1))
      self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                   BasicConv2d(cin, pp, kernel_size=1))

    def forward(self, x):
      return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

  class InceptionAux(nn.Module):
    def __init__(self, cin, num_classes):
      super().__init__()
      self.conv = BasicConv2d(cin, 128, kernel_size=1)
      self.fc1 = nn.Linear(2048, 1024)
      self.fc2 = nn.Linear(1024, num_classes)
      self.dropout = nn.Dropout(0.7)

    def forward(self, x):
      x = self.conv(torch.nn.functional.adaptive_avg_pool2d(x, (4, 4)))
      x = self.dropout(torch.relu(self.fc1(torch.flatten(x, 1))))
      return self.fc2(x)

  class GoogLeNet(nn.Module):
    def __init__(self, num_classes=1000, aux_logits=False, transform_input=False):
      super().__init__()
      self.transform_input = transform_input
      self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
      self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
      self.conv2 = BasicConv2d(64, 64, kernel_size=1)
      self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
      self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
      self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
      self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
      self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
      self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
      self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
      self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
      self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
      self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
      self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
      self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
      self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
      if aux_logits:
        self.aux1 = InceptionAux(512, num_classes)
        self.aux2 = InceptionAux(528, num_classes)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.dropout = nn.Dropout(0.2)
      self.fc = nn.Linear(1024, num_classes)

    def _transform_input(self, x):  # torchvision's, channel by channel
      if not self.transform_input:
        return x
      return torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                        x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                        x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)

    def forward(self, x):  # eval mode: no aux outputs
      x = self.maxpool1(self.conv1(self._transform_input(x)))
      x = self.maxpool2(self.conv3(self.conv2(x)))
      x = self.maxpool3(self.inception3b(self.inception3a(x)))
      for name in ("4a", "4b", "4c", "4d", "4e"):
        x = getattr(self, f"inception{name}")(x)
      x = self.inception5b(self.inception5a(self.maxpool4(x)))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  return {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck, "ResNet": ResNet,
          "AlexNet": AlexNet, "VGG": VGG, "GoogLeNet": GoogLeNet}


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def build_torch(torch, arch, num_classes):
  refs = torch_refs(torch)
  if arch == "resnet18":
    return refs["ResNet"](refs["BasicBlock"], (2, 2, 2, 2), num_classes)
  if arch == "resnet50":
    return refs["ResNet"](refs["Bottleneck"], (3, 4, 6, 3), num_classes)
  if arch == "alexnet":
    return refs["AlexNet"](num_classes)
  if arch == "vgg11_bn":
    return refs["VGG"](VGG11, True, num_classes)
  if arch == "googlenet":
    return refs["GoogLeNet"](num_classes)
  raise ValueError(arch)


def randomize_torch_bn(torch, net):
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
  return net.eval()


# (arch, input size): sizes chosen to exercise the tricky parts cheaply -- 163 gives
# AlexNet a 4x4 map that the adaptive pool spreads non-uniformly to 6x6 before the
# permuted fc6; 64 gives VGG a 2x2 map pooled to 7x7; 100 hits GoogLeNet's ceil-mode
# pools where they differ from floor (50 -> 25, 12 -> 6).
TORCH_CASES = [("resnet18", 64), ("resnet50", 64), ("alexnet", 163), ("vgg11_bn", 64),
               ("googlenet", 100)]


@pytest.mark.parametrize("arch,size", TORCH_CASES)
def test_torchvision_parity(torch, arch, size):
  from cnn_jax.weights import torch_import
  net = randomize_torch_bn(torch, build_torch(torch, arch, num_classes=10))
  variables = torch_import.convert_state_dict(net.state_dict(), arch)
  model = models.get_model(arch, num_classes=10)
  check_variables(model, variables, (size, size, 3))
  x = np.random.RandomState(0).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  assert_logits_close(apply_jit(model, variables, x), ref)


def test_googlenet_aux_heads_parity(torch):
  """aux1 / aux2 load into the model's aux heads and compute what torchvision's do.

  Each head runs on its own on a random feature map (14x14 as at 224 px: the adaptive
  pool to 4x4 has uneven windows; 7x7 as at 100 px), which tests fc1's flatten order.
  """
  from cnn_jax.models.googlenet import InceptionAux
  from cnn_jax.weights import torch_import
  net = randomize_torch_bn(torch, torch_refs(torch)["GoogLeNet"](num_classes=10, aux_logits=True))
  variables = torch_import.convert_state_dict(net.state_dict(), "googlenet")
  assert torch_import.model_kwargs("googlenet", variables) == {"num_classes": 10, "aux_logits": True}
  check_variables(models.get_model("googlenet", num_classes=10, aux_logits=True), variables,
                  (224, 224, 3))
  rs = np.random.RandomState(3)
  for name, channels, size in [("aux1", 512, 14), ("aux2", 528, 7)]:
    x = rs.normal(size=(2, size, size, channels)).astype(np.float32)
    head = {k: variables[k][name] for k in ("params", "batch_stats")}
    ours = InceptionAux(10).apply(head, jnp.asarray(x), train=False)
    with torch.no_grad():
      ref = getattr(net, name)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert_logits_close(ours, ref)


def test_cli_predict_googlenet_torchvision_checkpoint(torch, tmp_path, capsys):
  """`cnn-jax predict --model googlenet --weights F.pth`: torchvision's checkpoint layout
  (aux heads included) loads, and the input gets torchvision's transform_input."""
  from PIL import Image
  from cnn_jax import cli, predict
  net = randomize_torch_bn(torch, torch_refs(torch)["GoogLeNet"](
      num_classes=10, aux_logits=True, transform_input=True))
  torch.save(net.state_dict(), tmp_path / "googlenet.pth")
  image = np.random.RandomState(4).randint(0, 256, (224, 224, 3)).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / "image.png")
  mean, std = (np.array(v, np.float32) for v in IMAGENET_MEAN_STD)
  x = torch.from_numpy(((image / np.float32(255) - mean) / std)[None]).permute(0, 3, 1, 2)
  with torch.no_grad():
    ref = torch.softmax(net(x.float()), -1).numpy()[0]
    transformed = net._transform_input(x.float()).permute(0, 2, 3, 1).numpy()
  p = predict.from_weights("googlenet", str(tmp_path / "googlenet.pth"))
  # A random deep net barely depends on its input, so check the input transform itself.
  np.testing.assert_allclose(p.preprocess(image[None], jax.random.key(0), False), transformed,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p.probs(image[None])[0], ref, atol=2e-5)
  assert cli.main(["predict", "--model", "googlenet", "--weights", str(tmp_path / "googlenet.pth"),
                   "--top", "3", str(tmp_path / "image.png")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert "predicted in" in lines[0] and len(lines) == 4
  printed = [(int(l.split(": ")[1]), float(l.split("%")[0])) for l in lines[1:]]
  assert [i for i, _ in printed] == list(np.argsort(-ref)[:3])
  np.testing.assert_allclose([q for _, q in printed], 100 * np.sort(ref)[::-1][:3], atol=0.006)


def test_load_torchvision_pth(torch, tmp_path):
  from cnn_jax.weights import torch_import
  net = randomize_torch_bn(torch, build_torch(torch, "resnet18", num_classes=1000))
  path = tmp_path / "resnet18.pth"
  torch.save(net.state_dict(), path)
  variables = torch_import.load_torchvision_pth(str(path), "resnet18")
  check_variables(models.get_model("resnet18"), variables, (224, 224, 3))
  oihw = net.layer2[0].downsample[0].weight.detach().numpy()
  np.testing.assert_array_equal(variables["params"]["layer2_0"]["downsample_conv"]["kernel"],
                                oihw.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                net.bn1.running_var.numpy())
  with pytest.raises(ValueError, match="no torchvision mapping"):
    torch_import.convert_state_dict(net.state_dict(), "darknet19")
