"""Building blocks shared by the architectures.

Attribute names (`_conv`, `_batch_norm`) are PaddleSeg's `layers.ConvBN*` names, so published
weights load without renaming. BatchNorm2D is used everywhere; multi-GPU training converts it to
SyncBatchNorm (same parameter names) in the training loop, not here.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class ConvBN(nn.Layer):
    """Conv2D -> BatchNorm2D. `bias_attr=False` drops the conv bias as PaddleSeg does."""

    def __init__(self, in_channels, out_channels, kernel_size, padding="same", **conv_kw):
        super().__init__()
        self._conv = nn.Conv2D(in_channels, out_channels, kernel_size, padding=padding, **conv_kw)
        self._batch_norm = nn.BatchNorm2D(out_channels)

    def forward(self, x):
        return self._batch_norm(self._conv(x))


class ConvBNReLU(ConvBN):
    def forward(self, x):
        return F.relu(super().forward(x))


def avg_max_over_channels(tensors):
    """[x0 (N,C0,H,W), x1 (N,C1,H,W), ...] -> (N, 2*len, H, W): mean_0, max_0, mean_1, max_1, ..."""
    reduced = []
    for x in tensors:
        reduced += [paddle.mean(x, axis=1, keepdim=True), paddle.max(x, axis=1, keepdim=True)]
    return paddle.concat(reduced, axis=1)


def resize_to(x, size_hw, mode="bilinear"):
    """Resize a NCHW tensor to `size_hw` (a shape tensor slice or a pair); bilinear uses half-pixel centres."""
    if mode == "nearest":
        return F.interpolate(x, size_hw, mode="nearest")
    return F.interpolate(x, size_hw, mode=mode, align_corners=False)


class AdaptiveAvgPool(nn.Layer):
    """nn.AdaptiveAvgPool2D that also exports exactly at a static input size.

    Traced with a known height and width (an ONNX graph for one input shape, infer/onnx_export.py),
    it averages each output cell's window by slicing: paddle2onnx 2.1 turns adaptive pooling into one
    AveragePool with a fixed kernel and stride, which is wrong whenever the size is not a multiple of
    the bins (a 15-wide map in 4 bins has windows 4, 5, 5, 4 wide; 0.5% of PP-LiteSeg-T's pixels
    changed at 360x480). Everywhere else it is the Paddle op.
    """

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return _adaptive_avg_pool(x, self.size)


@paddle.jit.not_to_static  # plain Python while tracing: the branch is decided by the traced shape
def _adaptive_avg_pool(x, size):
    h, w = x.shape[2:]
    if paddle.in_dynamic_mode() or h < 0 or w < 0:
        return F.adaptive_avg_pool2d(x, size)
    rows = [[x[:, :, hs:he, ws:we].mean(axis=[2, 3], keepdim=True) for ws, we in _windows(w, size)]
            for hs, he in _windows(h, size)]
    return paddle.concat([paddle.concat(row, axis=3) for row in rows], axis=2)


def _windows(length, bins):
    """Adaptive pooling's [start, end) windows: floor(i * L / n) .. ceil((i + 1) * L / n)."""
    return [(i * length // bins, -(-(i + 1) * length // bins)) for i in range(bins)]


class DropPath(nn.Layer):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability `p`
    and scale the survivors by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = paddle.floor(keep + paddle.rand([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype))
        return x / keep * mask


def tokens_to_map(x, h, w):
    """(N, H*W, C) tokens -> (N, C, H, W) feature map."""
    return x.transpose([0, 2, 1]).reshape([0, x.shape[2], h, w])


def map_to_tokens(x):
    """(N, C, H, W) feature map -> (N, H*W, C) tokens."""
    return x.flatten(2).transpose([0, 2, 1])


class SeparableConvBNReLU(nn.Layer):
    """Depthwise ConvBN (k x k, optionally dilated) then pointwise ConvBNReLU. The misspelt
    `piontwise_conv` is PaddleSeg's attribute name, kept so published weights load."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation=1, **conv_kw):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.depthwise_conv = ConvBN(in_channels, in_channels, kernel_size, padding=pad, dilation=dilation,
                                     groups=in_channels, **conv_kw)
        self.piontwise_conv = ConvBNReLU(in_channels, out_channels, 1, **conv_kw)

    def forward(self, x):
        return self.piontwise_conv(self.depthwise_conv(x))
