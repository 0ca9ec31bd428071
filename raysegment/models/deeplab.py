"""DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017)
and DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution", 2018) on a
dilated ResNet-vd at output stride 8.

ASPP: parallel 1x1 and 3x3 convs dilated by the published rates (1, 12, 24, 36) plus an
image-level pooling branch, concatenated and fused by a 1x1 ConvBNReLU to 256 channels.
V3 classifies that directly; V3+ uses separable 3x3s in ASPP and a decoder that upsamples ASPP to
stride 4, concatenates 48 channels projected from stage 1, and refines with two separable convs.
Names follow PaddleSeg's DeepLabV3/DeepLabV3P heads (`head.aspp`, `head.cls`, `head.decoder`).
"""

import paddle
import paddle.nn as nn

from .layers import ConvBNReLU, SeparableConvBNReLU, resize_to
from .resnet_vd import ResNetVd


class ASPP(nn.Layer):
    def __init__(self, in_ch, out_ch=256, rates=(1, 12, 24, 36), separable=False):
        super().__init__()
        blocks = []
        for rate in rates:
            if rate == 1:
                blocks.append(ConvBNReLU(in_ch, out_ch, 1, padding=0))
            elif separable:
                blocks.append(SeparableConvBNReLU(in_ch, out_ch, 3, dilation=rate))
            else:
                blocks.append(ConvBNReLU(in_ch, out_ch, 3, padding=rate, dilation=rate))
        self.aspp_blocks = nn.LayerList(blocks)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2D(1), ConvBNReLU(in_ch, out_ch, 1, padding=0, bias_attr=False))
        self.conv_bn_relu = ConvBNReLU(out_ch * (len(rates) + 1), out_ch, 1, padding=0)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        size = paddle.shape(x)[2:]
        branches = [block(x) for block in self.aspp_blocks]
        branches.append(resize_to(self.global_avg_pool(x), size))  # image-level context, broadcast back
        return self.dropout(self.conv_bn_relu(paddle.concat(branches, axis=1)))


class V3Head(nn.Layer):
    def __init__(self, num_classes, in_ch):
        super().__init__()
        self.aspp = ASPP(in_ch)
        self.cls = nn.Conv2D(256, num_classes, 1)

    def forward(self, feats):
        return self.cls(self.aspp(feats[3]))


class Decoder(nn.Layer):
    def __init__(self, num_classes, low_ch):
        super().__init__()
        self.conv_bn_relu1 = ConvBNReLU(low_ch, 48, 1, padding=0)
        self.conv_bn_relu2 = SeparableConvBNReLU(256 + 48, 256, 3)
        self.conv_bn_relu3 = SeparableConvBNReLU(256, 256, 3)
        self.conv = nn.Conv2D(256, num_classes, 1)

    def forward(self, x, low):
        low = self.conv_bn_relu1(low)
        x = paddle.concat([resize_to(x, paddle.shape(low)[2:]), low], axis=1)
        return self.conv(self.conv_bn_relu3(self.conv_bn_relu2(x)))


class V3PlusHead(nn.Layer):
    def __init__(self, num_classes, low_ch, in_ch):
        super().__init__()
        self.aspp = ASPP(in_ch, separable=True)
        self.decoder = Decoder(num_classes, low_ch)

    def forward(self, feats):
        return self.decoder(self.aspp(feats[3]), feats[0])


class DeepLab(nn.Layer):
    def __init__(self, num_classes, backbone, plus):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        ch = backbone.feat_channels
        self.head = V3PlusHead(num_classes, ch[0], ch[3]) if plus else V3Head(num_classes, ch[3])
        self.classifier_prefixes = ("head.decoder.conv.",) if plus else ("head.cls.",)

    def forward(self, x):
        return [resize_to(self.head(self.backbone(x)), paddle.shape(x)[2:])]


def deeplab(layers, plus=False, num_classes=19):
    return DeepLab(num_classes, ResNetVd(layers, output_stride=8, multi_grid=(1, 2, 4)), plus)
