"""OCRNet (Yuan et al., "Object-Contextual Representations for Semantic Segmentation", 2020) on HRNet.

A 1x1 auxiliary head predicts coarse class maps ("soft object regions") from the backbone;
each class's region representation is the softmax-over-pixels weighted mean of a 512-channel
pixel embedding; every pixel then attends over the K region representations (keys/values from
two-layer 1x1 projections to 256), and the attended context, concatenated with the pixel
embedding, is fused and classified. Training supervises both the final and the auxiliary
logits (loss coefficients 1 and 0.4 published). Names follow PaddleSeg's OCRHead.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .hrnet import HRNet
from .layers import ConvBNReLU, resize_to

MID, KEY = 512, 256


def conv1x1(in_ch, out_ch):
    return ConvBNReLU(in_ch, out_ch, 1)


class ObjectAttention(nn.Layer):
    def __init__(self, ch, key_ch):
        super().__init__()
        self.key_ch = key_ch
        self.f_pixel = nn.Sequential(conv1x1(ch, key_ch), conv1x1(key_ch, key_ch))
        self.f_object = nn.Sequential(conv1x1(ch, key_ch), conv1x1(key_ch, key_ch))
        self.f_down = conv1x1(ch, key_ch)
        self.f_up = conv1x1(key_ch, ch)

    def forward(self, pixels, regions):
        """pixels (N, C, H, W), regions (N, C, K, 1) -> context (N, C, H, W)."""
        shape = paddle.shape(pixels)
        query = self.f_pixel(pixels).flatten(2).transpose([0, 2, 1])  # (N, HW, key)
        key = self.f_object(regions).flatten(2)  # (N, key, K)
        value = self.f_down(regions).flatten(2).transpose([0, 2, 1])  # (N, K, key)
        sim = F.softmax(paddle.matmul(query, key) * self.key_ch**-0.5, axis=-1)
        context = paddle.matmul(sim, value).transpose([0, 2, 1]).reshape([0, self.key_ch, shape[2], shape[3]])
        return self.f_up(context)


class SpatialOCR(nn.Layer):
    def __init__(self, ch, key_ch):
        super().__init__()
        self.attention_block = ObjectAttention(ch, key_ch)
        self.conv1x1 = nn.Sequential(conv1x1(2 * ch, ch), nn.Dropout2D(0.1))

    def forward(self, pixels, regions):
        return self.conv1x1(paddle.concat([self.attention_block(pixels, regions), pixels], axis=1))


class OCRHead(nn.Layer):
    def __init__(self, num_classes, in_ch):
        super().__init__()
        self.conv3x3_ocr = ConvBNReLU(in_ch, MID, 3, padding=1)
        self.spatial_ocr = SpatialOCR(MID, KEY)
        self.cls_head = nn.Conv2D(MID, num_classes, 1)
        self.aux_head = nn.Sequential(conv1x1(in_ch, in_ch), nn.Conv2D(in_ch, num_classes, 1))

    def forward(self, feat):
        soft_regions = self.aux_head(feat)  # (N, K, H, W)
        pixels = self.conv3x3_ocr(feat)  # (N, MID, H, W)
        weights = F.softmax(soft_regions.flatten(2), axis=2)  # over pixels, per class
        regions = paddle.matmul(weights, pixels.flatten(2).transpose([0, 2, 1]))  # (N, K, MID)
        regions = regions.transpose([0, 2, 1]).unsqueeze(-1)  # (N, MID, K, 1)
        return [self.cls_head(self.spatial_ocr(pixels, regions)), soft_regions]


class OCRNet(nn.Layer):
    classifier_prefixes = ("head.cls_head.", "head.aux_head.1.")
    loss_coefs = (1.0, 0.4)

    def __init__(self, num_classes, backbone):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = OCRHead(num_classes, backbone.feat_channels[0])

    def forward(self, x):
        logits = self.head(self.backbone(x)[0])
        if not self.training:
            logits = logits[:1]
        return [resize_to(logit, paddle.shape(x)[2:]) for logit in logits]


def ocrnet(width, num_classes=19):
    return OCRNet(num_classes, HRNet(width))
