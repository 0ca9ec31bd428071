"""ResNet-vd (He et al., "Bag of Tricks for Image Classification", 2019) as DeepLab's dilated backbone.

"vd": a 3-conv stem (3x3/2 to 32, 32, 64 channels) instead of one 7x7, and projection shortcuts
that average-pool 2x2 before their 1x1 conv instead of striding it. For segmentation the last
stages trade stride for dilation: output stride 8 dilates stage 3 by 2 and stage 4 by 4, with
stage 4's three blocks further multiplied by `multi_grid` (1, 2, 4 published). Names follow
PaddleSeg's ResNet_vd (`conv1_1`, `bb_<stage>_<block>.conv0/conv1/conv2/short`).
"""

import paddle.nn as nn
import paddle.nn.functional as F

from .layers import ConvBN, ConvBNReLU

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
WIDTHS = (64, 128, 256, 512)  # bottleneck widths; each stage outputs 4x


class Bottleneck(nn.Layer):
    def __init__(self, in_ch, width, stride, dilation, project, pool_shortcut):
        super().__init__()
        self.conv0 = ConvBNReLU(in_ch, width, 1, padding=0, bias_attr=False)
        self.conv1 = ConvBNReLU(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias_attr=False)
        self.conv2 = ConvBN(width, width * 4, 1, padding=0, bias_attr=False)
        self.pool_shortcut = pool_shortcut
        if project:
            self.short = ConvBN(in_ch, width * 4, 1, padding=0, bias_attr=False)

    def forward(self, x):
        y = self.conv2(self.conv1(self.conv0(x)))
        if hasattr(self, "short"):
            if self.pool_shortcut:  # the "d" of vd: pool, then project, so no input pixel is skipped
                x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
            x = self.short(x)
        return F.relu(x + y)


class ResNetVd(nn.Layer):
    def __init__(self, layers=50, output_stride=8, multi_grid=(1, 2, 4)):
        super().__init__()
        dilations = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}[output_stride]
        self.conv1_1 = ConvBNReLU(3, 32, 3, stride=2, padding=1, bias_attr=False)
        self.conv1_2 = ConvBNReLU(32, 32, 3, padding=1, bias_attr=False)
        self.conv1_3 = ConvBNReLU(32, 64, 3, padding=1, bias_attr=False)
        self.feat_channels = [w * 4 for w in WIDTHS]
        self.stages = []
        in_ch = 64
        for s, (depth, width) in enumerate(zip(DEPTHS[layers], WIDTHS)):
            blocks = []
            for i in range(depth):
                dilation = dilations[s] * (multi_grid[i] if s == 3 else 1)
                stride = 2 if i == 0 and s > 0 and dilation == 1 else 1
                block = Bottleneck(in_ch, width, stride, dilation, project=i == 0, pool_shortcut=stride == 2)
                self.add_sublayer(f"bb_{s}_{i}", block)
                blocks.append(block)
                in_ch = width * 4
            self.stages.append(blocks)

    def forward(self, x):
        x = self.conv1_3(self.conv1_2(self.conv1_1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        feats = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
            feats.append(x)
        return feats  # strides 4, 8, 8, 8 at output stride 8
