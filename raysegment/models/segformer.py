"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", 2021): a Mix Transformer (MiT) encoder and an all-MLP decoder.

MiT: four stages; each embeds overlapping patches with a strided conv (7x7/4, then 3x3/2), then
runs `depth` blocks of efficient self-attention (keys and values spatially reduced by a strided
conv of `sr_ratio`) and a Mix-FFN (a 3x3 depthwise conv between the two linears), then a
LayerNorm. Outputs strides 4, 8, 16, 32. Decoder: a linear per stage to `embedding_dim`, upsample
all to stride 4, concatenate, 1x1 ConvBNReLU fuse, 1x1 classifier, upsample to the input.
Published arguments (model_configs.json): B0 embed dims [32, 64, 160, 256] and decoder width 256;
B1-B5 [64, 128, 320, 512], decoder 256 (B1) or 768; depths below; drop-path rate 0.1.
"""

from functools import partial

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import ConvBNReLU, DropPath, map_to_tokens, resize_to, tokens_to_map

DEPTHS = {"B0": (2, 2, 2, 2), "B1": (2, 2, 2, 2), "B2": (3, 4, 6, 3), "B3": (3, 4, 18, 3), "B4": (3, 8, 27, 3), "B5": (3, 6, 40, 3)}
BlockNorm = partial(nn.LayerNorm, epsilon=1e-6)  # MiT's blocks and stage norms; patch embeds keep 1e-5


class OverlapPatchEmbed(nn.Layer):
    def __init__(self, in_ch, dim, patch, stride):
        super().__init__()
        self.proj = nn.Conv2D(in_ch, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        hw = paddle.shape(x)[2:]  # a tensor: H and W stay dynamic in the exported graph
        return self.norm(map_to_tokens(x)), hw[0], hw[1]


class EfficientAttention(nn.Layer):
    """Multi-head attention whose keys/values come from the map shrunk by `sr_ratio` (N/r^2 tokens)."""

    def __init__(self, dim, heads, sr_ratio):
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2D(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        c = x.shape[2]
        q = self.q(x).reshape([0, -1, self.heads, c // self.heads]).transpose([0, 2, 1, 3])  # (B, heads, N, d)
        src = self.norm(map_to_tokens(self.sr(tokens_to_map(x, h, w)))) if self.sr_ratio > 1 else x
        kv = self.kv(src).reshape([0, -1, 2, self.heads, c // self.heads]).transpose([2, 0, 3, 1, 4])  # (2, B, heads, M, d)
        attn = F.softmax(paddle.matmul(q, kv[0], transpose_y=True) * self.scale, axis=-1)
        return self.proj(paddle.matmul(attn, kv[1]).transpose([0, 2, 1, 3]).reshape([0, -1, c]))


class DWConv(nn.Layer):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2D(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, h, w):
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Layer):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Layer):
    def __init__(self, dim, heads, sr_ratio, drop_path, mlp_ratio=4):
        super().__init__()
        self.norm1 = BlockNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = BlockNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Layer):
    def __init__(self, dims, depths, heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), drop_path_rate=0.1):
        super().__init__()
        self.feat_channels = list(dims)
        rates = paddle.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows with depth
        start = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(3 if i == 0 else dims[i - 1], dim, patch, stride))
            setattr(self, f"block{i + 1}", nn.LayerList(
                [Block(dim, heads[i], sr_ratios[i], rates[start + j]) for j in range(depth)]))
            setattr(self, f"norm{i + 1}", BlockNorm(dim))
            start += depth

    def forward(self, x):
        feats = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), h, w)
            feats.append(x)
        return feats  # strides 4, 8, 16, 32


class MLP(nn.Layer):
    """The decoder's per-stage linear: (N, C, H, W) -> (N, E, H, W)."""

    def __init__(self, in_ch, dim):
        super().__init__()
        self.proj = nn.Linear(in_ch, dim)

    def forward(self, x):
        hw = paddle.shape(x)[2:]
        return tokens_to_map(self.proj(map_to_tokens(x)), hw[0], hw[1])


class SegFormer(nn.Layer):
    classifier_prefixes = ("linear_pred.",)

    def __init__(self, num_classes, backbone, embedding_dim):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        for i, ch in enumerate(backbone.feat_channels):
            setattr(self, f"linear_c{i + 1}", MLP(ch, embedding_dim))
        self.linear_fuse = ConvBNReLU(4 * embedding_dim, embedding_dim, 1, bias_attr=False)
        self.dropout = nn.Dropout2D(0.1)
        self.linear_pred = nn.Conv2D(embedding_dim, num_classes, 1)

    def forward(self, x):
        feats = self.backbone(x)
        size = paddle.shape(feats[0])[2:]
        ups = [resize_to(getattr(self, f"linear_c{i + 1}")(f), size) for i, f in enumerate(feats)]
        fused = self.linear_fuse(paddle.concat(ups[::-1], axis=1))  # c4, c3, c2, c1, as published
        return [resize_to(self.linear_pred(self.dropout(fused)), paddle.shape(x)[2:])]


def segformer(variant, num_classes=19):
    dims = (32, 64, 160, 256) if variant == "B0" else (64, 128, 320, 512)
    embedding = 256 if variant in ("B0", "B1") else 768
    return SegFormer(num_classes, MixVisionTransformer(dims, DEPTHS[variant]), embedding)
