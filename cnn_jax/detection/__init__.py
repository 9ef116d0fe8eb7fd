"""Detection: heads that turn a classification backbone into a localizer or a detector.

Backbones are zoo models built with `include_top=False` (they then return their last
feature map) or any module `backbone(x, train) -> (N, H, W, C)` or `(N, D)`.

* boxes: box format conversions and IoU.
* localization: `Localizer` (one object per image) and `localization_loss`.
* yolo: `YOLOHead`, `encode_yolo_targets`, `yolo_loss`, `decode_yolo` (YOLO v1).
* backbones: `TinyBackbone`, a few-second backbone for tests and demos.

The heads return tuples / dicts rather than logits, so they are not in the model
registry; build them directly.
"""
from cnn_jax.detection.backbones import TinyBackbone
from cnn_jax.detection.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from cnn_jax.detection.localization import Localizer, localization_loss
from cnn_jax.detection.yolo import YOLOHead, decode_yolo, encode_yolo_targets, yolo_loss

__all__ = [
    "TinyBackbone", "box_iou", "cxcywh_to_xyxy", "xyxy_to_cxcywh", "Localizer",
    "localization_loss", "YOLOHead", "decode_yolo", "encode_yolo_targets", "yolo_loss",
]
