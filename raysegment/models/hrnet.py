"""HRNet (Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", 2019).

A stride-4 stem and one bottleneck layer, then stages that keep every resolution seen so far and
add one at half the previous: stage 2 runs branches at strides 4 and 8, stage 3 adds 16, stage 4
adds 32. Each module runs four basic blocks per branch and then exchanges information: every
output branch sums all inputs, upsampled by 1x1 conv + bilinear resize or downsampled by chains of
stride-2 3x3 convs. The output concatenates all four branches at stride 4 (270 channels for W18,
720 for W48). Names follow PaddleSeg's HRNet (`la1`, `tr1`, `st2.stage_st2_1.branches_func...`);
its convs use "same" padding, which pads stride-2 convs on the bottom/right only.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import ConvBN, ConvBNReLU, resize_to

MODULES = (1, 4, 3)  # HighResolutionModules in stages 2, 3, 4


class Bottleneck(nn.Layer):
    def __init__(self, in_ch, width, downsample):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, width, 1, bias_attr=False)
        self.conv2 = ConvBNReLU(width, width, 3, bias_attr=False)
        self.conv3 = ConvBN(width, width * 4, 1, bias_attr=False)
        if downsample:
            self.conv_down = ConvBN(in_ch, width * 4, 1, bias_attr=False)

    def forward(self, x):
        y = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(y + (self.conv_down(x) if hasattr(self, "conv_down") else x))


class BasicBlock(nn.Layer):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = ConvBNReLU(ch, ch, 3, bias_attr=False)
        self.conv2 = ConvBN(ch, ch, 3, bias_attr=False)

    def forward(self, x):
        return F.relu(x + self.conv2(self.conv1(x)))


class Layer1(nn.Layer):
    def __init__(self, in_ch=64, width=64, blocks=4):
        super().__init__()
        self.blocks = [self.add_sublayer(f"bb_layer2_{i + 1}", Bottleneck(in_ch if i == 0 else width * 4, width, i == 0))
                       for i in range(blocks)]

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class Transition(nn.Layer):
    """Adapts the previous stage's branches to this stage's widths and adds the new, lowest branch."""

    def __init__(self, in_chs, out_chs, name):
        super().__init__()
        self.convs = []
        for i, out in enumerate(out_chs):
            if i < len(in_chs) and in_chs[i] == out:
                conv = None
            else:  # a new branch comes from the lowest existing one at stride 2
                conv = ConvBNReLU(in_chs[min(i, len(in_chs) - 1)], out, 3, stride=1 if i < len(in_chs) else 2, bias_attr=False)
                self.add_sublayer(f"transition_{name}_layer_{i + 1}", conv)
            self.convs.append(conv)

    def forward(self, xs):
        return [x if conv is None else conv(x) for conv, x in zip(self.convs, xs + [xs[-1]] * (len(self.convs) - len(xs)))]


class Branches(nn.Layer):
    def __init__(self, chs, name, blocks=4):
        super().__init__()
        self.branches = [[self.add_sublayer(f"bb_{name}_branch_layer_{i + 1}_{j + 1}", BasicBlock(ch)) for j in range(blocks)]
                         for i, ch in enumerate(chs)]

    def forward(self, xs):
        outs = []
        for blocks, x in zip(self.branches, xs):
            for block in blocks:
                x = block(x)
            outs.append(x)
        return outs


class Fuse(nn.Layer):
    """out[i] = relu(sum over j of x[j] brought to branch i's width and resolution)."""

    def __init__(self, chs, name):
        super().__init__()
        self.paths = {}
        for i, out in enumerate(chs):
            for j, ch in enumerate(chs):
                if j > i:  # lower resolution: 1x1 to out's width, then upsample in forward
                    self.paths[i, j] = [self.add_sublayer(f"residual_{name}_layer_{i + 1}_{j + 1}", ConvBN(ch, out, 1, bias_attr=False))]
                elif j < i:  # higher resolution: i - j stride-2 convs, ReLU between, the last to out's width
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        conv = (ConvBN if last else ConvBNReLU)(ch, out if last else ch, 3, stride=2, bias_attr=False)
                        steps.append(self.add_sublayer(f"residual_{name}_layer_{i + 1}_{j + 1}_{k + 1}", conv))
                    self.paths[i, j] = steps
        self.num_branches = len(chs)

    def forward(self, xs):
        outs = []
        for i in range(self.num_branches):
            y = xs[i]
            for j in range(self.num_branches):
                if j == i:
                    continue
                z = xs[j]
                for step in self.paths[i, j]:
                    z = step(z)
                y = y + (resize_to(z, paddle.shape(xs[i])[2:]) if j > i else z)
            outs.append(F.relu(y))
        return outs


class Module(nn.Layer):
    def __init__(self, chs, name):
        super().__init__()
        self.branches_func = Branches(chs, name)
        self.fuse_func = Fuse(chs, name)

    def forward(self, xs):
        return self.fuse_func(self.branches_func(xs))


class Stage(nn.Layer):
    def __init__(self, chs, modules, name):
        super().__init__()
        self.hr_modules = [self.add_sublayer(f"stage_{name}_{i + 1}", Module(chs, f"{name}_{i + 1}")) for i in range(modules)]

    def forward(self, xs):
        for module in self.hr_modules:
            xs = module(xs)
        return xs


class HRNet(nn.Layer):
    def __init__(self, width=18):
        super().__init__()
        chs = [width * 2**i for i in range(4)]
        self.conv_layer1_1 = ConvBNReLU(3, 64, 3, stride=2, bias_attr=False)
        self.conv_layer1_2 = ConvBNReLU(64, 64, 3, stride=2, bias_attr=False)
        self.la1 = Layer1()
        self.tr1 = Transition([256], chs[:2], "tr1")
        self.st2 = Stage(chs[:2], MODULES[0], "st2")
        self.tr2 = Transition(chs[:2], chs[:3], "tr2")
        self.st3 = Stage(chs[:3], MODULES[1], "st3")
        self.tr3 = Transition(chs[:3], chs, "tr3")
        self.st4 = Stage(chs, MODULES[2], "st4")
        self.feat_channels = [sum(chs)]

    def forward(self, x):
        x = self.la1(self.conv_layer1_2(self.conv_layer1_1(x)))
        xs = self.st2(self.tr1([x]))
        xs = self.st3(self.tr2(xs))
        xs = self.st4(self.tr3(xs))
        size = paddle.shape(xs[0])[2:]
        return [paddle.concat([xs[0]] + [resize_to(x, size) for x in xs[1:]], axis=1)]  # (N, 15 * width, H/4, W/4)
