"""Independently written PyTorch AlexNets of torchvision's and Caffe's layouts, and their
test-time preprocessing, as references for imported weights.

Written from torchvision's models/alexnet.py and Caffe's bvlc_alexnet deploy.prototxt as
published (not from this project's code): `features`/`classifier` sequentials with
torchvision's module indices, so `state_dict()` has torchvision's keys; Caffe's net with
grouped conv2/4/5, LRN (PyTorch's LocalResponseNorm divides alpha by the window, as
Caffe does) before pooling, and BGR input. Widths are parameters so that tests stay tiny.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.AlexNet with its widths as parameters (64, 192, 384, 256, 256; 4096)."""

  def __init__(self, num_classes: int = 1000, widths=(64, 192, 384, 256, 256), hidden=4096):
    super().__init__()
    c1, c2, c3, c4, c5 = widths
    self.features = nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=0.5), nn.Linear(c5 * 6 * 6, hidden), nn.ReLU(inplace=True),
        nn.Dropout(p=0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


class CaffeAlexNet(nn.Module):
  """bvlc_alexnet's deploy net: 227 BGR input, groups 2 on conv2/4/5, LRN(5, 1e-4, 0.75, k=1)."""

  def __init__(self, num_classes: int = 1000, widths=(96, 256, 384, 384, 256), hidden=4096):
    super().__init__()
    c1, c2, c3, c4, c5 = widths
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    self.conv1 = nn.Conv2d(3, c1, 11, stride=4)
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=2)
    self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
    self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=2)
    self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=2)
    self.fc6 = nn.Linear(c5 * 6 * 6, hidden)
    self.fc7 = nn.Linear(hidden, hidden)
    self.fc8 = nn.Linear(hidden, num_classes)
    self.lrn1, self.lrn2 = lrn(), lrn()
    self.pool = nn.MaxPool2d(3, 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.pool(self.lrn1(torch.relu(self.conv1(x))))
    x = self.pool(self.lrn2(torch.relu(self.conv2(x))))
    x = torch.relu(self.conv5(torch.relu(self.conv4(torch.relu(self.conv3(x))))))
    x = torch.flatten(self.pool(x), 1)
    return self.fc8(torch.relu(self.fc7(torch.relu(self.fc6(x)))))

  def layers(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Caffe's blobs: (weight, bias) per layer name, weights (O, I/groups, kh, kw) / (out, in)."""
    return {name: (getattr(self, name).weight.detach().numpy().copy(),
                   getattr(self, name).bias.detach().numpy().copy())
            for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision's CenterCrop offsets: round((H - size) / 2); Caffe's: (H - size) // 2."""
  top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def torchvision_input(images: np.ndarray, crop: int = 224) -> torch.Tensor:
  """transforms ToTensor + Normalize(ImageNet mean, std) of uint8 RGB (n, 256, 256, 3) crops."""
  x = torch.from_numpy(np.stack([center_crop(im, crop) for im in images])).permute(0, 3, 1, 2)
  x = x.float() / 255.0
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  return (x - mean) / std


def caffe_input(images: np.ndarray, crop: int = 227,
                mean_bgr=(104.0, 117.0, 123.0)) -> torch.Tensor:
  """caffe.io.Transformer of bvlc_alexnet: RGB -> BGR, 0-255, minus the per-channel mean."""
  bgr = np.stack([center_crop(im, crop) for im in images])[..., ::-1].astype(np.float32)
  bgr = bgr - np.asarray(mean_bgr, np.float32)
  return torch.from_numpy(np.ascontiguousarray(bgr)).permute(0, 3, 1, 2)


def save_png(image: np.ndarray, path: str) -> None:
  """A lossless file of `image`, so that every reader decodes the same pixels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(image).save(path, format='PNG')


def he_init(net: nn.Module) -> nn.Module:
  """He-normal weights and small random biases: unlike PyTorch's default init, which shrinks
  the signal layer by layer, the logits then depend on the image by O(1), so that a wrong
  input (a swapped channel, another mean) changes them far beyond the tolerances."""
  for module in net.modules():
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
      nn.init.uniform_(module.bias, -0.1, 0.1)
  return net
