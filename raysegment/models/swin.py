"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", 2021) as a 4-stage backbone (strides 4, 8, 16, 32), MaskFormer's configuration.

Patches of 4x4 are embedded, then each stage runs blocks of window attention (7x7 windows, a
learned bias per relative position) alternating with the windows shifted by 3 so information
crosses window borders, and ends with patch merging (2x2 neighbours concatenated, linear to 2C).
Every stage's output gets its own LayerNorm (`norm0`..`norm3`). Shapes stay dynamic: padding to
whole windows, the shifted-window mask and the reshapes use shape tensors, so the exported graph
takes any H and W. Names follow PaddleSeg's SwinTransformer.
"""

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import DropPath

WINDOW = 7


def pad_to_multiple(x, multiple, h, w):
    """x (N, C, H, W) padded on the bottom/right so H and W are multiples of `multiple` (shape tensors)."""
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    zero = paddle.zeros([1], "int32")
    pad = paddle.concat([zero, pw.reshape([1]).astype("int32"), zero, ph.reshape([1]).astype("int32")])
    return F.pad(x, pad), h + ph, w + pw


def windows_of(x, hn, wn):
    """(N, H, W, C) with H = hn*7, W = wn*7 -> (N*hn*wn, 49, C)."""
    c = x.shape[-1]
    x = x.reshape([0, hn, WINDOW, wn, WINDOW, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, WINDOW * WINDOW, c])


def merge_windows(x, hn, wn):
    """(N*hn*wn, 49, C) -> (N, hn*7, wn*7, C)."""
    c = x.shape[-1]
    x = x.reshape([-1, hn, wn, WINDOW, WINDOW, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, hn * WINDOW, wn * WINDOW, c])


def relative_position_index(window):
    """(w*w, w*w) index into the (2w-1)^2 bias table for every pair of positions in a window."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(hp, wp, shift):
    """(nW, 49, 49) additive mask for shifted windows: -100 between positions that came from
    different image regions (the roll wrapped them together), 0 elsewhere."""
    def region(n):  # 0 | 1 | 2 along one axis: [0, n-7), [n-7, n-shift), [n-shift, n)
        idx = paddle.arange(n)
        return (idx >= n - WINDOW).astype("int64") + (idx >= n - shift).astype("int64")

    ids = (region(hp).unsqueeze(1) * 3 + region(wp).unsqueeze(0)).unsqueeze(0).unsqueeze(-1).astype("float32")
    ids = windows_of(ids, hp // WINDOW, wp // WINDOW).squeeze(-1)  # (nW, 49)
    return (ids.unsqueeze(1) != ids.unsqueeze(2)).astype("float32") * -100.0


class WindowAttention(nn.Layer):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            [(2 * WINDOW - 1) ** 2, heads], default_initializer=nn.initializer.TruncatedNormal(std=0.02))
        self.register_buffer("relative_position_index", paddle.to_tensor(relative_position_index(WINDOW), "int64"))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        """x (B*nW, 49, C); mask (nW, 49, 49) or None."""
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape([-1, n, 3, self.heads, c // self.heads]).transpose([2, 0, 3, 1, 4])
        attn = paddle.matmul(qkv[0] * self.scale, qkv[1], transpose_y=True)  # (B*nW, heads, 49, 49)
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index.flatten())
        attn = attn + bias.reshape([n, n, self.heads]).transpose([2, 0, 1]).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape([-1, nw, self.heads, n, n]) + mask.unsqueeze(1).unsqueeze(0)).reshape([-1, self.heads, n, n])
        out = paddle.matmul(F.softmax(attn, axis=-1), qkv[2])  # (B*nW, heads, 49, d)
        return self.proj(out.transpose([0, 2, 1, 3]).reshape([-1, n, c]))


class Mlp(nn.Layer):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Layer):
    def __init__(self, dim, heads, shift, drop_path):
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x, h, w):
        """x (N, H*W, C) with H, W shape tensors."""
        c = x.shape[2]
        y = self.norm1(x).reshape([0, h, w, c]).transpose([0, 3, 1, 2])
        y, hp, wp = pad_to_multiple(y, WINDOW, h, w)
        y = y.transpose([0, 2, 3, 1])  # (N, Hp, Wp, C)
        mask = None
        if self.shift:
            y = paddle.roll(y, shifts=(-self.shift, -self.shift), axis=(1, 2))
            mask = shift_mask(hp, wp, self.shift)
        hn, wn = hp // WINDOW, wp // WINDOW
        y = merge_windows(self.attn(windows_of(y, hn, wn), mask), hn, wn)
        if self.shift:
            y = paddle.roll(y, shifts=(self.shift, self.shift), axis=(1, 2))
        y = y[:, :h, :w, :].reshape([0, -1, c])
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)

    def forward(self, x, h, w):
        c = x.shape[2]
        x, hp, wp = pad_to_multiple(x.reshape([0, h, w, c]).transpose([0, 3, 1, 2]), 2, h, w)
        x = x.transpose([0, 2, 3, 1])
        # the 2x2 neighbours in PaddleSeg's (and Swin's) order: (0,0), (1,0), (0,1), (1,1)
        x = paddle.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x.reshape([0, -1, 4 * c]))), hp // 2, wp // 2


class Stage(nn.Layer):
    def __init__(self, dim, depth, heads, rates, downsample):
        super().__init__()
        self.blocks = nn.LayerList([SwinBlock(dim, heads, 0 if i % 2 == 0 else WINDOW // 2, rates[i]) for i in range(depth)])
        if downsample:
            self.downsample = PatchMerging(dim)

    def forward(self, x, h, w):
        for block in self.blocks:
            x = block(x, h, w)
        return x


class PatchEmbed(nn.Layer):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2D(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        shape = paddle.shape(x)
        x, _, _ = pad_to_multiple(x, 4, shape[2], shape[3])
        x = self.proj(x)
        hw = paddle.shape(x)[2:]
        return self.norm(x.flatten(2).transpose([0, 2, 1])), hw[0], hw[1]


class SwinTransformer(nn.Layer):
    def __init__(self, depths, heads, dim=96, drop_path_rate=0.3):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        rates = paddle.linspace(0, drop_path_rate, sum(depths)).tolist()
        dims = [dim * 2**i for i in range(4)]
        self.layers = nn.LayerList()
        for i, depth in enumerate(depths):
            self.layers.append(Stage(dims[i], depth, heads[i], rates[sum(depths[:i]):sum(depths[: i + 1])], downsample=i < 3))
            self.add_sublayer(f"norm{i}", nn.LayerNorm(dims[i]))
        self.feat_channels = dims

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        feats = []
        for i, stage in enumerate(self.layers):
            x = stage(x, h, w)
            out = getattr(self, f"norm{i}")(x)
            feats.append(out.transpose([0, 2, 1]).reshape([0, self.feat_channels[i], h, w]))
            if hasattr(stage, "downsample"):
                x, h, w = stage.downsample(x, h, w)
        return feats  # strides 4, 8, 16, 32
