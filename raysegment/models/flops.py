"""Multiply-accumulates of one forward pass (GFLOPs in the papers' convention).

    count_gmacs(build_model("SegFormer-B0"), 512)   # 7.8

Counts Conv2D and Linear layers (forward hooks) plus every paddle.matmul / paddle.einsum call
(attention's QK^T and AV, MaskFormer's mask products). paddle.flops covers the layers but misses
direct matmuls and, in Paddle 3.3.1, crashes on some of our models (an int() of a shape-[1]
tensor in dynamic_flops).
"""

import numpy as np
import paddle


class MacCounter:
    """Context manager: MACs of what `layer` runs inside it, in `.macs`; paddle is put back after."""

    def __init__(self, layer):
        self.layer, self.macs = layer, 0
        self.saved = {(mod, name): getattr(mod, name) for mod in (paddle, paddle.tensor) for name in ("matmul", "einsum")}

    def _layer_hook(self, layer, inputs, out):
        if isinstance(layer, paddle.nn.Conv2D):  # per output element: C_in / groups * kh * kw
            self.macs += int(np.prod(out.shape)) * int(np.prod(layer.weight.shape[1:]))
        else:  # Linear: in_features per output element
            self.macs += int(np.prod(out.shape)) * layer.weight.shape[0]

    def _matmul(self, x, y, transpose_x=False, transpose_y=False, name=None):
        out = self.saved[(paddle, "matmul")](x, y, transpose_x, transpose_y, name)
        self.macs += int(np.prod(out.shape)) * (x.shape[-2] if transpose_x else x.shape[-1])
        return out

    def _einsum(self, equation, *operands):
        out = self.saved[(paddle, "einsum")](equation, *operands)
        inputs, output = equation.replace(" ", "").split("->")
        sizes = {c: n for term, op in zip(inputs.split(","), operands) for c, n in zip(term, op.shape)}
        self.macs += int(np.prod(out.shape)) * int(np.prod([n for c, n in sizes.items() if c not in output]))
        return out

    def __enter__(self):
        for mod in (paddle, paddle.tensor):
            mod.matmul, mod.einsum = self._matmul, self._einsum
        self.hooks = [sub.register_forward_post_hook(self._layer_hook) for sub in self.layer.sublayers()
                      if isinstance(sub, (paddle.nn.Conv2D, paddle.nn.Linear))]
        return self

    def __exit__(self, *exc):
        for (mod, name), fn in self.saved.items():
            setattr(mod, name, fn)
        for hook in self.hooks:
            hook.remove()


def count_gmacs(layer, size):
    """GMACs of one eval-mode forward of a (1, 3, size, size) input."""
    layer.eval()
    with MacCounter(layer) as counter, paddle.no_grad():
        layer(paddle.rand([1, 3, size, size]))
    return counter.macs / 1e9
