"""SegResult: PaddleX's semantic-segmentation result object, with compact JSON.

A result is a dict with PaddleX's keys: `input_path`, `page_index`, `input_img` (H, W, 3 RGB) and
`pred` (1, H, W) int32 label map. PaddleX's JSON spells `pred` out as nested lists (3.3 MB for one
360x480 image); ours stores it as a lossless PNG, base64-encoded, with its shape:
    "pred": {"encoding": "png+base64", "shape": [h, w], "data": "iVBORw0..."}
(`decode_mask` turns it back into the array; the PNG is the one every label map of ours uses,
see data/labels.py). `.img["res"]` is the pseudo-colour map as an RGB
ndarray, coloured as PaddleX colours it.
"""

import base64
import json
import mimetypes
import os
import uuid

from .. import storage
from ..data.image import encode_image
from ..data.labels import decode_label, encode_label_png
from ..data.visualize import colorize


def decode_mask(pred_json):
    """The `pred` entry of our JSON -> (H, W) label map."""
    return decode_label(base64.b64decode(pred_json["data"]), name="pred")


def _is_type(path, prefix):
    mime, _ = mimetypes.guess_type(str(path))
    return mime is not None and mime.startswith(prefix)


class SegResult(dict):
    def __init__(self, input_path, input_img, pred, class_names=None, page_index=None):
        super().__init__(input_path=input_path, page_index=page_index, input_img=input_img, pred=pred)
        self.class_names = list(class_names or [])
        self._stem = None

    @property
    def label_map(self):
        """(H, W) int32 class indices."""
        return self["pred"][0]

    def _input_stem(self):
        path = self["input_path"]
        if path is None:
            self._stem = self._stem or f"image_{uuid.uuid4().hex[:8]}"  # as PaddleX names array inputs
            return self._stem, ".png"
        name = os.path.basename(str(path).split("?")[0].rstrip("/"))
        stem, suffix = os.path.splitext(name)
        if self["page_index"] is not None:  # a PDF page: doc.pdf page 2 -> doc_2, as PaddleX names it
            stem = f"{stem}_{self['page_index']}"
        return stem, suffix if _is_type(name, "image/") else ".png"

    def _res_json(self, mask=True):
        h, w = self.label_map.shape
        pred = {"encoding": "png+base64", "shape": [h, w], "data": base64.b64encode(encode_label_png(self.label_map)).decode()}
        res = {"input_path": self["input_path"], "page_index": self["page_index"], "pred": pred if mask else "..."}
        if self.class_names:
            res["class_names"] = self.class_names
        return {"res": res}

    @property
    def json(self):
        return self._res_json()

    @property
    def str(self):
        return {"res": json.dumps(self._res_json(mask=False)["res"], indent=4, ensure_ascii=False)}

    @property
    def img(self):
        return {"res": colorize(self.label_map)}

    def print(self, format_json=True, indent=4, ensure_ascii=False):
        data = self._res_json(mask=False)
        print(json.dumps(data, indent=indent if format_json else None, ensure_ascii=ensure_ascii))

    def save_to_json(self, save_path, indent=4, ensure_ascii=False):
        """`save_path` ending in .json is the file; otherwise a folder that gets `<input stem>_res.json`."""
        save_path = os.fspath(save_path)
        if not _is_type(save_path, "application/json"):
            save_path = os.path.join(save_path, f"{self._input_stem()[0]}_res.json")
        text = json.dumps(self.json["res"], indent=indent, ensure_ascii=ensure_ascii)
        storage.write_bytes(save_path, text.encode("utf-8"))
        return save_path

    def save_to_img(self, save_path):
        """`save_path` with an image suffix is the file; otherwise a folder that gets
        `<input stem>_res<input suffix>` (PaddleX's naming; .png for non-file inputs)."""
        save_path = os.fspath(save_path)
        if not _is_type(save_path, "image/"):
            stem, suffix = self._input_stem()
            save_path = os.path.join(save_path, f"{stem}_res{suffix}")
        storage.write_bytes(save_path, encode_image(self.img["res"], os.path.splitext(save_path)[1]))
        return save_path

    def __repr__(self):
        return json.dumps(self._res_json(mask=False), ensure_ascii=False)
