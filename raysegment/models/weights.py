"""Strict `.pdparams` loading: every key and shape must match, or the error names what does not.

PaddleSeg's loader skips what does not fit and leaves it random, which turns a naming mistake into
a model that runs and is wrong. Here the only leniency is explicit: `skip_prefixes` lets training
replace a classifier head whose class count differs, and the skipped keys are returned.
"""

import os

import numpy as np


class WeightsError(ValueError):
    pass


def read_state_dict(path):
    """Read a `.pdparams` file into {name: ndarray}; a clear error for a missing or unreadable file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path!r} does not exist; pass the path of a .pdparams file")
    import paddle  # late, as everywhere in the registry: reading a config need not load Paddle

    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as e:  # paddle raises several types for a damaged pickle
        raise WeightsError(f"cannot read weights file {path!r} ({type(e).__name__}: {e}); is it a .pdparams file?") from e
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path!r} holds a {type(state).__name__}, not a state_dict")
    return state


def load_weights(model, path_or_state, skip_prefixes=(), where=None):
    """Load weights into `model` strictly; returns the sorted list of keys skipped by `skip_prefixes`.

    Raises WeightsError naming the missing, unexpected and mis-shaped keys (a few of each).
    """
    if isinstance(path_or_state, dict):
        state, where = path_or_state, where or "the given state_dict"
    else:
        state, where = read_state_dict(path_or_state), where or repr(os.fspath(path_or_state))
    own = model.state_dict()
    skipped = sorted(k for k in set(own) | set(state) if k.startswith(tuple(skip_prefixes)))
    keep = set(own) - set(skipped)
    missing = sorted(keep - set(state))
    unexpected = sorted(set(state) - set(own) - set(skipped))
    mis_shaped = sorted(
        f"{k} (file {list(np.shape(state[k]))}, model {list(own[k].shape)})"
        for k in keep & set(state)
        if list(np.shape(state[k])) != list(own[k].shape)
    )
    problems = [
        f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if items
    ]
    if problems:
        raise WeightsError(
            f"weights {where} do not fit {type(model).__name__}: " + "; ".join(problems)
            + ". Check the model name and num_classes the weights were trained with."
        )
    model.set_state_dict({k: state[k] for k in keep})
    return skipped


def save_weights(model, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    import paddle

    paddle.save(model.state_dict(), os.fspath(path))
