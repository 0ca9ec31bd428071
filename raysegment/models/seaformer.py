"""SeaFormer (Wan et al., "SeaFormer: Squeeze-enhanced Axial Transformer for Mobile Semantic
Segmentation", ICLR 2023).

Backbone: a MobileNetV2 stem and five stacks of inverted residuals (strides 4, 8, 16, 32, 64);
the last two (three for large) stacks are followed by SeaFormer blocks. A block's attention
squeezes queries/keys/values to a row mean and a column mean, attends along each axis (H and W
tokens only, with learned axial position embeddings resized to the length) and broadcasts the sum
back; a depthwise-3x3 "detail" branch over q, k, v is gated by the attention output. Head: the
stride-8 detail feature is gated (hard sigmoid) by each deeper feature in turn, then a depthwise
1x1 ConvBNReLU and a classifier. Names and per-size arguments follow PaddleSeg's SeaFormer.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import ConvBN, ConvBNReLU, DropPath, resize_to

# per size: MobileNetV2 stacks [kernel, expand, out, stride], stack input widths, SeaFormer
# stage widths, key dims, depths, heads, MLP ratios, head width, fusion widths
VARIANTS = {
    "tiny": dict(cfgs=[[[3, 1, 16, 1], [3, 4, 16, 2], [3, 3, 16, 1]], [[5, 3, 32, 2], [5, 3, 32, 1]],
                       [[3, 3, 64, 2], [3, 3, 64, 1]], [[5, 3, 128, 2]], [[3, 6, 160, 2]]],
                 channels=[16, 16, 32, 64, 128, 160], dims=[128, 160], key_dims=[16, 24], depths=[2, 2], heads=4,
                 mlp_ratios=[2, 4], head_channels=96, embed_dims=[64, 96]),
    "small": dict(cfgs=[[[3, 1, 16, 1], [3, 4, 24, 2], [3, 3, 24, 1]], [[5, 3, 48, 2], [5, 3, 48, 1]],
                        [[3, 3, 96, 2], [3, 3, 96, 1]], [[5, 4, 160, 2]], [[3, 6, 192, 2]]],
                  channels=[16, 24, 48, 96, 160, 192], dims=[160, 192], key_dims=[16, 24], depths=[3, 3], heads=6,
                  mlp_ratios=[2, 4], head_channels=128, embed_dims=[96, 128]),
    "base": dict(cfgs=[[[3, 1, 16, 1], [3, 4, 32, 2], [3, 3, 32, 1]], [[5, 3, 64, 2], [5, 3, 64, 1]],
                       [[3, 3, 128, 2], [3, 3, 128, 1]], [[5, 4, 192, 2]], [[3, 6, 256, 2]]],
                 channels=[16, 32, 64, 128, 192, 256], dims=[192, 256], key_dims=[16, 24], depths=[4, 4], heads=8,
                 mlp_ratios=[2, 4], head_channels=160, embed_dims=[128, 160]),
    "large": dict(cfgs=[[[3, 3, 32, 1], [3, 4, 64, 2], [3, 4, 64, 1]], [[5, 4, 128, 2], [5, 4, 128, 1]],
                        [[3, 4, 192, 2], [3, 4, 192, 1]], [[5, 4, 256, 2]], [[3, 6, 320, 2]]],
                  channels=[32, 64, 128, 192, 256, 320], dims=[192, 256, 320], key_dims=[16, 20, 24], depths=[3, 3, 3],
                  heads=8, mlp_ratios=[2, 4, 6], head_channels=192, embed_dims=[128, 160, 192]),
}


def conv_bn(in_ch, out_ch, kernel=1, **kw):
    return ConvBN(in_ch, out_ch, kernel, bias_attr=False, **kw)


class InvertedResidual(nn.Layer):
    """MobileNetV2 block: [1x1 expand, ReLU,] depthwise kxk (stride), ReLU, 1x1 project; residual when shapes allow."""

    def __init__(self, in_ch, out_ch, kernel, stride, expand):
        hidden = int(round(in_ch * expand))
        layers = [conv_bn(in_ch, hidden), nn.ReLU()] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden), nn.ReLU(),
                   conv_bn(hidden, out_ch)]
        super().__init__()
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MV2Stack(nn.Layer):
    def __init__(self, cfgs, in_ch, stem):
        super().__init__()
        if stem:
            self.stem_block = nn.Sequential(conv_bn(3, in_ch, 3, stride=2, padding=1), nn.ReLU())
        self.stem = stem
        self.blocks = []
        for i, (kernel, expand, out, stride) in enumerate(cfgs):
            self.blocks.append(self.add_sublayer(f"layer{i + 1}", InvertedResidual(in_ch, out, kernel, stride, expand)))
            in_ch = out

    def forward(self, x):
        if self.stem:
            x = self.stem_block(x)
        for block in self.blocks:
            x = block(x)
        return x


class AxialPosEmbedding(nn.Layer):
    """A learned (1, C, 16) embedding, linearly resized to the squeezed axis length and added."""

    def __init__(self, dim, length=16):
        super().__init__()
        self.pos_embed = self.create_parameter([1, dim, length], default_initializer=nn.initializer.Normal())

    def forward(self, x):  # x (N, C, L)
        return x + F.interpolate(self.pos_embed, paddle.shape(x)[2:], mode="linear", align_corners=False, data_format="NCW")


class SeaAttention(nn.Layer):
    def __init__(self, dim, key_dim, heads, attn_ratio=2):
        super().__init__()
        self.heads, self.key_dim, self.scale = heads, key_dim, key_dim**-0.5
        self.d = attn_ratio * key_dim
        nh_kd, dh = key_dim * heads, self.d * heads
        self.to_q, self.to_k, self.to_v = conv_bn(dim, nh_kd), conv_bn(dim, nh_kd), conv_bn(dim, dh)
        self.proj = nn.Sequential(nn.ReLU6(), conv_bn(dh, dim))
        self.proj_encode_row = nn.Sequential(nn.ReLU6(), conv_bn(dh, dh))
        self.pos_emb_rowq, self.pos_emb_rowk = AxialPosEmbedding(nh_kd), AxialPosEmbedding(nh_kd)
        self.proj_encode_column = nn.Sequential(nn.ReLU6(), conv_bn(dh, dh))
        self.pos_emb_columnq, self.pos_emb_columnk = AxialPosEmbedding(nh_kd), AxialPosEmbedding(nh_kd)
        self.dwconv = conv_bn(2 * dh, 2 * dh, 3, padding=1, groups=2 * dh)
        self.pwconv = conv_bn(2 * dh, dim)

    def axial(self, q, k, v, pos_q, pos_k):
        """q, k (N, heads*kd, L), v (N, heads*d, L) squeezed along one axis -> (N, heads*d, L)."""
        q = pos_q(q).reshape([0, self.heads, self.key_dim, -1]).transpose([0, 1, 3, 2])  # (N, heads, L, kd)
        k = pos_k(k).reshape([0, self.heads, self.key_dim, -1])  # (N, heads, kd, L)
        v = v.reshape([0, self.heads, self.d, -1]).transpose([0, 1, 3, 2])  # (N, heads, L, d)
        out = paddle.matmul(F.softmax(paddle.matmul(q, k) * self.scale, axis=-1), v)
        return out.transpose([0, 1, 3, 2]).reshape([0, self.heads * self.d, -1])

    def forward(self, x):
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(F.relu6(self.dwconv(paddle.concat([q, k, v], axis=1))))
        rows = self.axial(q.mean(-1), k.mean(-1), v.mean(-1), self.pos_emb_rowq, self.pos_emb_rowk)  # (N, dh, H)
        cols = self.axial(q.mean(-2), k.mean(-2), v.mean(-2), self.pos_emb_columnq, self.pos_emb_columnk)  # (N, dh, W)
        rows = self.proj_encode_row(rows.unsqueeze(-1))  # (N, dh, H, 1)
        cols = self.proj_encode_column(cols.unsqueeze(-2))  # (N, dh, 1, W)
        return F.hardsigmoid(self.proj(v + rows + cols)) * detail  # row + column broadcast to (N, dh, H, W)


class Mlp(nn.Layer):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = conv_bn(dim, hidden)
        self.dwconv = nn.Conv2D(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = conv_bn(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu6(self.dwconv(self.fc1(x))))


class Block(nn.Layer):
    def __init__(self, dim, key_dim, heads, mlp_ratio, drop_path):
        super().__init__()
        self.attn = SeaAttention(dim, key_dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class SeaFormerStage(nn.Layer):
    def __init__(self, depth, dim, key_dim, heads, mlp_ratio, drop_path_rate=0.1):
        super().__init__()
        rates = paddle.linspace(0, drop_path_rate, depth).tolist()
        self.transformer_blocks = nn.LayerList([Block(dim, key_dim, heads, mlp_ratio, r) for r in rates])

    def forward(self, x):
        for block in self.transformer_blocks:
            x = block(x)
        return x


class SeaFormerBackbone(nn.Layer):
    def __init__(self, cfgs, channels, dims, key_dims, depths, heads, mlp_ratios):
        super().__init__()
        self.stacks = [self.add_sublayer(f"smb{i + 1}", MV2Stack(cfg, channels[i], stem=i == 0)) for i, cfg in enumerate(cfgs)]
        self.first_trans = len(cfgs) - len(depths)  # the last len(depths) stacks are followed by SeaFormer stages
        self.stages = [self.add_sublayer(f"trans{i + 1}", SeaFormerStage(depths[i], dims[i], key_dims[i], heads, mlp_ratios[i]))
                       for i in range(len(depths))]
        self.feat_channels = [cfgs[1][-1][2]] + list(dims)

    def forward(self, x):
        feats = []
        for i, stack in enumerate(self.stacks):
            x = stack(x)
            if i == 1:
                feats.append(x)  # stride 8: the detail branch
            if i >= self.first_trans:
                x = self.stages[i - self.first_trans](x)
                feats.append(x)
        return feats


class Fusion(nn.Layer):
    """Local (detail) features gated by the hard-sigmoid of a deeper feature resized to them."""

    def __init__(self, local_ch, global_ch, dim):
        super().__init__()
        self.local_embedding = conv_bn(local_ch, dim)
        self.global_act = conv_bn(global_ch, dim)

    def forward(self, local, glob):
        return self.local_embedding(local) * resize_to(F.hardsigmoid(self.global_act(glob)), paddle.shape(local)[2:])


class SeaFormerSeg(nn.Layer):
    classifier_prefixes = ("cls_seg.",)

    def __init__(self, num_classes, backbone, head_channels, embed_dims):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        ch = backbone.feat_channels
        self.fusions = [self.add_sublayer(f"fuse{i + 1}", Fusion(ch[0] if i == 0 else embed_dims[i - 1], ch[i + 1], dim))
                        for i, dim in enumerate(embed_dims)]
        self.linear_fuse = ConvBNReLU(head_channels, head_channels, 1, groups=head_channels, bias_attr=False)
        self.dropout = nn.Dropout2D(0.1)
        self.cls_seg = nn.Conv2D(head_channels, num_classes, 1)

    def forward(self, x):
        feats = self.backbone(x)
        detail = feats[0]
        for fusion, glob in zip(self.fusions, feats[1:]):
            detail = fusion(detail, glob)
        logit = self.cls_seg(self.dropout(self.linear_fuse(detail)))
        return [resize_to(logit, paddle.shape(x)[2:])]


def seaformer(size, num_classes=150):
    v = VARIANTS[size]
    backbone = SeaFormerBackbone(v["cfgs"], v["channels"], v["dims"], v["key_dims"], v["depths"], v["heads"], v["mlp_ratios"])
    return SeaFormerSeg(num_classes, backbone, v["head_channels"], v["embed_dims"])
