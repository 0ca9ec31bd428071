"""STDC backbones (Fan et al., "Rethinking BiSeNet For Real-time Semantic Segmentation", 2021).

STDC1 (813) and STDC2 (1446) differ only in how many blocks each stage has. Parameter names
follow PaddleSeg's STDCNet (`features.<i>.conv_list.<j>.conv/.bn`, `avd_layer`), so its published
ImageNet and PP-LiteSeg weights load unchanged. The backbone is built without `conv_last`,
as in PP-LiteSeg.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class ConvX(nn.Layer):
    """Conv (no bias) -> BN -> ReLU, named `conv`/`bn` as in STDCNet."""

    def __init__(self, in_ch, out_ch, kernel=3, stride=1):
        super().__init__()
        self.conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias_attr=False)
        self.bn = nn.BatchNorm2D(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CatBottleneck(nn.Layer):
    """Short-Term Dense Concatenate block.

    Four convs whose widths halve (out/2, out/4, out/8, out/8); their outputs are concatenated
    back to `out_ch` channels. A stride-2 block downsamples after the first 1x1 conv with a
    depthwise conv (`avd_layer`) and average-pools the first output for the concatenation.
    """

    def __init__(self, in_ch, out_ch, block_num=4, stride=1):
        super().__init__()
        assert block_num > 2, "STDC blocks have at least three convs"
        self.stride = stride
        half = out_ch // 2
        if stride == 2:
            self.avd_layer = nn.Sequential(
                nn.Conv2D(half, half, 3, stride=2, padding=1, groups=half, bias_attr=False),
                nn.BatchNorm2D(half),
            )
            self.skip = nn.AvgPool2D(kernel_size=3, stride=2, padding=1)
        widths = [half] + [out_ch // 2 ** (i + 1) for i in range(1, block_num - 1)]
        widths.append(widths[-1])  # the last two convs have the same width
        self.conv_list = nn.LayerList([ConvX(in_ch, widths[0], kernel=1)])
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            self.conv_list.append(ConvX(w_in, w_out))

    def forward(self, x):
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return paddle.concat([first] + outs, axis=1)


class STDCNet(nn.Layer):
    """Returns the features at strides 2, 4, 8, 16, 32 with `feat_channels` channels."""

    def __init__(self, stage_blocks, base=64, block_num=4, in_channels=3):
        super().__init__()
        self.feat_channels = [base // 2, base, base * 4, base * 8, base * 16]
        features = [ConvX(in_channels, base // 2, 3, 2), ConvX(base // 2, base, 3, 2)]
        # stage_ends[i] = index one past the last block of stride 2**(i+1)
        self.stage_ends = [1, 2]
        in_ch = base
        for stage, n_blocks in enumerate(stage_blocks):
            out_ch = base * 4 * 2**stage
            for j in range(n_blocks):
                features.append(CatBottleneck(in_ch, out_ch, block_num, stride=2 if j == 0 else 1))
                in_ch = out_ch
            self.stage_ends.append(len(features))
        self.features = nn.Sequential(*features)

    def forward(self, x):
        feats, start = [], 0
        for end in self.stage_ends:
            for i in range(start, end):
                x = self.features[i](x)
            feats.append(x)
            start = end
        return feats


def stdc1(**kw):
    return STDCNet([2, 2, 2], **kw)


def stdc2(**kw):
    return STDCNet([4, 5, 3], **kw)
