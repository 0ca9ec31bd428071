"""PP-LiteSeg (Peng et al., "PP-LiteSeg: A Superior Real-Time Semantic Segmentation Model", 2022).

STDC backbone -> Simple Pyramid Pooling Module on the stride-32 features -> three Unified
Attention Fusion Modules walking back up to stride 8 -> a SegHead per fused level. In eval mode
only the stride-8 head runs; in train mode all three heads give logits for the (OHEM) losses.
Published arguments (model_configs.json): T = STDC1 with arm_out_chs [32, 64, 128] and
seg_head_inter_chs [32, 64, 64]; B = STDC2 with the defaults below.
"""

import paddle
import paddle.nn as nn

from .layers import AdaptiveAvgPool, ConvBN, ConvBNReLU, avg_max_over_channels, resize_to
from .stdcnet import stdc1, stdc2


class PPContextModule(nn.Layer):
    """SPPM: average-pool to each bin size, 1x1 conv, upsample, sum, 3x3 conv."""

    def __init__(self, in_ch, inter_ch, out_ch, bin_sizes):
        super().__init__()
        self.stages = nn.LayerList(
            [nn.Sequential(AdaptiveAvgPool(size), ConvBNReLU(in_ch, inter_ch, 1)) for size in bin_sizes]
        )
        self.conv_out = ConvBNReLU(inter_ch, out_ch, 3, padding=1)

    def forward(self, x):
        hw = paddle.shape(x)[2:]
        out = sum(resize_to(stage(x), hw) for stage in self.stages)
        return self.conv_out(out)


class UAFM_SpAtten(nn.Layer):
    """Fuse a low-level x (stride s) with a high-level y (stride 2s) by a spatial attention map.

    atten = sigmoid(conv(mean_c(x), max_c(x), mean_c(y), max_c(y)))   # (N, 1, H, W)
    out   = conv_out(x * atten + y * (scale - atten))
    `_scale` is a frozen parameter (1.0) kept for weight compatibility.
    """

    def __init__(self, x_ch, y_ch, out_ch, ksize=3, resize_mode="bilinear"):
        super().__init__()
        self.conv_x = ConvBNReLU(x_ch, y_ch, ksize, padding=ksize // 2, bias_attr=False)
        self.conv_out = ConvBNReLU(y_ch, out_ch, 3, padding=1, bias_attr=False)
        self.conv_xy_atten = nn.Sequential(
            ConvBNReLU(4, 2, 3, padding=1, bias_attr=False),
            ConvBN(2, 1, 3, padding=1, bias_attr=False),
        )
        self._scale = self.create_parameter([1], default_initializer=nn.initializer.Constant(1.0))
        self._scale.stop_gradient = True
        self.resize_mode = resize_mode

    def forward(self, x, y):
        x = self.conv_x(x)
        y = resize_to(y, paddle.shape(x)[2:], self.resize_mode)
        atten = nn.functional.sigmoid(self.conv_xy_atten(avg_max_over_channels([x, y])))
        return self.conv_out(x * atten + y * (self._scale - atten))


class PPLiteSegHead(nn.Layer):
    def __init__(self, backbone_chs, arm_out_chs, cm_bin_sizes, cm_out_ch, resize_mode):
        super().__init__()
        self.cm = PPContextModule(backbone_chs[-1], cm_out_ch, cm_out_ch, cm_bin_sizes)
        high_chs = list(arm_out_chs[1:]) + [cm_out_ch]
        self.arm_list = nn.LayerList(
            [
                UAFM_SpAtten(low, high, out, resize_mode=resize_mode)
                for low, high, out in zip(backbone_chs, high_chs, arm_out_chs)
            ]
        )

    def forward(self, feats):
        """feats: backbone features at strides [8, 16, 32] -> fused features at the same strides."""
        high = self.cm(feats[-1])
        fused = []
        for low, arm in zip(reversed(feats), reversed(self.arm_list)):
            high = arm(low, high)
            fused.insert(0, high)
        return fused


class SegHead(nn.Layer):
    def __init__(self, in_ch, mid_ch, num_classes):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch, 3, padding=1, bias_attr=False)
        self.conv_out = nn.Conv2D(mid_ch, num_classes, 1, bias_attr=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class PPLiteSeg(nn.Layer):
    def __init__(
        self,
        num_classes,
        backbone,
        backbone_indices=(2, 3, 4),
        cm_bin_sizes=(1, 2, 4),
        cm_out_ch=128,
        arm_out_chs=(64, 96, 128),
        seg_head_inter_chs=(64, 64, 64),
        resize_mode="bilinear",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.backbone_indices = list(backbone_indices)
        backbone_chs = [backbone.feat_channels[i] for i in backbone_indices]
        self.ppseg_head = PPLiteSegHead(backbone_chs, arm_out_chs, cm_bin_sizes, cm_out_ch, resize_mode)
        self.seg_heads = nn.LayerList(
            [SegHead(c, mid, num_classes) for c, mid in zip(arm_out_chs, seg_head_inter_chs)]
        )
        # the layers whose shape depends on num_classes: replaced when fine-tuning to other classes
        self.classifier_prefixes = tuple(f"seg_heads.{i}.conv_out" for i in range(len(self.seg_heads)))

    def forward(self, x):
        hw = paddle.shape(x)[2:]
        feats = self.backbone(x)
        fused = self.ppseg_head([feats[i] for i in self.backbone_indices])
        if self.training:
            return [resize_to(head(f), hw) for head, f in zip(self.seg_heads, fused)]
        return [resize_to(self.seg_heads[0](fused[0]), hw)]


def pp_liteseg_t(num_classes=19):
    return PPLiteSeg(num_classes, stdc1(), arm_out_chs=(32, 64, 128), seg_head_inter_chs=(32, 64, 64))


def pp_liteseg_b(num_classes=19):
    return PPLiteSeg(num_classes, stdc2())
