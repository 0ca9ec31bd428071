"""Our exported folder in PaddleX itself: same masks. PaddleX lives in its own virtualenv (its
dependencies are not ours), named by RAYSEGMENT_PADDLEX_PYTHON; without it this test is skipped.

    python3.11 -m venv /tmp/pxenv && /tmp/pxenv/bin/pip install paddlepaddle==3.3.1 'paddlex[cv]==3.7.2'
    RAYSEGMENT_PADDLEX_PYTHON=/tmp/pxenv/bin/python .venv/bin/python -m pytest tests/test_paddlex_compat.py
"""

import os
import subprocess
import textwrap

import numpy as np
import pytest

import raysegment
from conftest import jpeg_bytes, random_image

PADDLEX_PYTHON = os.environ.get("RAYSEGMENT_PADDLEX_PYTHON")

PADDLEX_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from paddlex import create_model
    # PaddleX defaults to oneDNN on CPU, which Paddle 3.3.1 cannot run for interpolation ops
    m = create_model(model_name="PP-LiteSeg-T", model_dir=sys.argv[1], device="cpu",
                     engine="paddle_static", engine_config={"run_mode": "paddle"})
    (res,) = list(m.predict(sys.argv[2], batch_size=1))
    np.save(sys.argv[3], res["pred"])
    """
)


@pytest.mark.skipif(not PADDLEX_PYTHON, reason="set RAYSEGMENT_PADDLEX_PYTHON to a Python with paddlex installed")
def test_paddlex_loads_our_export_and_predicts_the_same_masks(inference_dir, tmp_path):
    img = random_image(96, 128, seed=11)
    path = tmp_path / "img.jpg"
    path.write_bytes(jpeg_bytes(img))
    script = tmp_path / "px.py"
    script.write_text(PADDLEX_SCRIPT)
    env = {**os.environ, "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    done = subprocess.run([PADDLEX_PYTHON, str(script), inference_dir, str(path), str(tmp_path / "px.npy")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = np.load(tmp_path / "px.npy")
    (ours,) = raysegment.create_model(model_dir=inference_dir).predict(str(path))
    assert theirs.shape == ours["pred"].shape == (1, 96, 128)
    np.testing.assert_array_equal(theirs, ours["pred"])
    assert len(np.unique(theirs)) > 1
