"""MaskFormer (Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic
Segmentation", NeurIPS 2021) on Swin-T/S.

Instead of a class per pixel, 100 learned queries each predict a class (150 + "no object") and a
binary mask. A pixel decoder (FPN with GroupNorm: 1x1 laterals, 3x3 outputs, top-down nearest
upsampling) turns the backbone's four stages into 256-channel stride-4 "mask features"; a
6-layer DETR-style transformer decoder (post-norm, sine position encoding, no encoder) lets the
queries attend to the projected stride-32 feature; each query's mask is the dot product of its
MLP embedding with the mask features. Semantic inference (PaddleSeg's): mask logits resized to
the input, then class probabilities (no-object dropped) times mask probabilities, summed over
queries, gives (N, K, H, W) scores.

Training returns every decoder layer's predictions (deep supervision) and is scored by
`raysegment.models.maskformer_loss` (Hungarian matching, cross-entropy, focal and dice losses).
Names follow PaddleSeg's MaskFormer (`seghead.pixel_decoder`, `seghead.predictor`).
"""

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import resize_to
from .swin import SwinTransformer

DIM, QUERIES, HEADS, LAYERS, FFN = 256, 100, 8, 6, 2048


class ConvGN(nn.Layer):
    """Conv (no bias) -> GroupNorm(32) [-> ReLU], named `_conv`/`_norm` as in PaddleSeg."""

    def __init__(self, in_ch, out_ch, kernel, relu):
        super().__init__()
        self._conv = nn.Conv2D(in_ch, out_ch, kernel, padding=kernel // 2, bias_attr=False)
        self._norm = nn.GroupNorm(32, out_ch)
        self.relu = relu

    def forward(self, x):
        x = self._norm(self._conv(x))
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Layer):
    def __init__(self, in_chs):
        super().__init__()
        top_down = in_chs[::-1]  # stride 32 first; the top level has no lateral (index 0 is empty)
        self.lateral_convs = nn.LayerList([nn.Identity()] + [ConvGN(ch, DIM, 1, relu=False) for ch in top_down[1:]])
        self.output_convs = nn.LayerList([ConvGN(top_down[0], DIM, 3, relu=True)] + [ConvGN(DIM, DIM, 3, relu=True) for _ in top_down[1:]])
        self.mask_features = nn.Sequential()
        self.mask_features.add_sublayer("_conv", nn.Conv2D(DIM, DIM, 3, padding=1))

    def forward(self, feats):
        feats = feats[::-1]
        y = self.output_convs[0](feats[0])
        for lateral, output, x in zip(self.lateral_convs[1:], self.output_convs[1:], feats[1:]):
            x = lateral(x)
            y = output(x + F.interpolate(y, paddle.shape(x)[2:], mode="nearest"))
        return self.mask_features(y)  # (N, 256, H/4, W/4)


def sine_position_encoding(x):
    """DETR's normalized sine encoding of (row, column) for a (N, C, H, W) map -> (1, H*W, 256)."""
    feats, temperature = DIM // 2, 10000.0
    shape = paddle.shape(x)
    ones = paddle.ones([1, shape[2], shape[3]], "float32")
    scale, eps = 2 * math.pi, 1e-6
    y_embed = paddle.cumsum(ones, axis=1)
    x_embed = paddle.cumsum(ones, axis=2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = temperature ** (2 * (paddle.arange(feats, dtype="float32") // 2) / feats)
    pos = []
    for embed in (y_embed, x_embed):
        p = embed.unsqueeze(-1) / dim_t  # (1, H, W, feats)
        pos.append(paddle.stack([paddle.sin(p[..., 0::2]), paddle.cos(p[..., 1::2])], axis=4).flatten(3))
    return paddle.concat(pos, axis=3).flatten(1, 2)  # (1, H*W, 2*feats)


class DecoderLayer(nn.Layer):
    """Post-norm: self-attention over queries, cross-attention to the image, FFN."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiHeadAttention(DIM, HEADS, dropout=0.1)
        self.multihead_attn = nn.MultiHeadAttention(DIM, HEADS, dropout=0.1)
        self.linear1 = nn.Linear(DIM, FFN)
        self.linear2 = nn.Linear(FFN, DIM)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(DIM), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.dropout = nn.Dropout(0.1)

    def forward(self, tgt, memory, pos, query_pos):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.dropout(self.multihead_attn(tgt + query_pos, memory + pos, memory)))
        return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Decoder(nn.Layer):
    def __init__(self):
        super().__init__()
        self.decoder_list = nn.LayerList([DecoderLayer() for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(DIM)

    def forward(self, memory, pos, query_pos):
        tgt = paddle.zeros_like(query_pos)
        outs = []
        for layer in self.decoder_list:
            tgt = layer(tgt, memory, pos, query_pos)
            outs.append(self.norm(tgt))
        return outs  # every layer's (N, Q, 256), normed: deep supervision


class Transformer(nn.Layer):
    """Decoder only: the published config has no encoder layers (the name keeps PaddleSeg's keys)."""

    def __init__(self):
        super().__init__()
        self.decoder = Decoder()


class MLP(nn.Layer):
    def __init__(self, dim, layers=3):
        super().__init__()
        self.layers = nn.LayerList([nn.Linear(dim, dim) for _ in range(layers)])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class Predictor(nn.Layer):
    def __init__(self, num_classes, in_ch):
        super().__init__()
        self.transformer = Transformer()
        self.query_embed = nn.Embedding(QUERIES, DIM)
        self.input_proj = nn.Conv2D(in_ch, DIM, 1)
        self.class_embed = nn.Linear(DIM, num_classes + 1)  # + "no object"
        self.mask_embed = MLP(DIM)

    def forward(self, top, mask_features):
        """top (N, C5, h, w), mask_features (N, 256, H/4, W/4) -> [(class logits (N, Q, K+1), masks (N, Q, H/4, W/4))] per layer."""
        memory = self.input_proj(top).flatten(2).transpose([0, 2, 1])  # (N, h*w, 256)
        query_pos = self.query_embed.weight.unsqueeze(0).expand([paddle.shape(memory)[0], QUERIES, DIM])
        outs = []
        for hs in self.transformer.decoder(memory, sine_position_encoding(top), query_pos):
            masks = paddle.einsum("nqc,nchw->nqhw", self.mask_embed(hs), mask_features)
            outs.append((self.class_embed(hs), masks))
        return outs


class Head(nn.Layer):
    def __init__(self, num_classes, in_chs):
        super().__init__()
        self.pixel_decoder = PixelDecoder(in_chs)
        self.predictor = Predictor(num_classes, in_chs[-1])

    def forward(self, feats):
        return self.predictor(feats[-1], self.pixel_decoder(feats))


def semantic_scores(class_logits, masks, size_hw):
    """(N, Q, K+1), (N, Q, h, w) -> (N, K, H, W): sum over queries of P(class) * P(mask).

    As PaddleSeg's MaskFormer: the mask logits are resized to the input size (bilinear) before
    the sigmoid, so the scores are those of full-resolution masks, not resized stride-4 scores
    (the sigmoid does not commute with the resize)."""
    probs = F.softmax(class_logits, axis=-1)[:, :, :-1]
    return paddle.einsum("nqk,nqhw->nkhw", probs, F.sigmoid(resize_to(masks, size_hw)))


class MaskFormer(nn.Layer):
    classifier_prefixes = ("seghead.predictor.class_embed.",)

    def __init__(self, num_classes, backbone):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.seghead = Head(num_classes, backbone.feat_channels)

    def forward(self, x):
        """eval: [scores (N, K, H, W)]; train: {"layers": [(class logits, masks at stride 4)] per decoder layer}."""
        outs = self.seghead(self.backbone(x))
        if self.training:
            return {"layers": outs}
        return [semantic_scores(*outs[-1], paddle.shape(x)[2:])]

    def loss(self, outputs, label):
        from .maskformer_loss import maskformer_loss

        return maskformer_loss(outputs["layers"], label, self.num_classes)


def maskformer(size, num_classes=150):
    depths = {"tiny": (2, 2, 6, 2), "small": (2, 2, 18, 2)}[size]
    return MaskFormer(num_classes, SwinTransformer(depths, heads=(3, 6, 12, 24)))
