"""PDF inputs: each page rendered to an RGB image with pypdfium2, as PaddleX renders them.

PaddleX renders at scale 2.0 (144 dpi), shrinking a page whose render would pass its pixel limit,
and numbers pages from 0 in a result's `page_index`; so do we. A PDF that pdfium cannot open is an
ImageError naming it, like any other undecodable input.
"""

import threading

from .image import ImageError, to_rgb8

PDF_SUFFIX = ".pdf"
RENDER_SCALE = 2.0
MIN_RENDER_SCALE = 0.1
_PDFIUM = threading.Lock()  # pdfium is not thread-safe: one document at a time per process


def is_pdf(name=None, data=None):
    """Whether an input is a PDF, by its name or its first bytes."""
    return (isinstance(name, str) and name.split("?", 1)[0].lower().endswith(PDF_SUFFIX)) or (data or b"")[:5] == b"%PDF-"


def render_pages(data, name="PDF", max_pixels=None):
    """PDF bytes -> [(H, W, 3) uint8 RGB] one per page. A page whose render at RENDER_SCALE would
    pass `max_pixels` is rendered smaller (down to MIN_RENDER_SCALE; below that, an error)."""
    import pypdfium2

    with _PDFIUM:
        try:
            doc = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as e:
            raise ImageError(f"{name} is not a readable PDF ({e})") from None
        try:
            if len(doc) == 0:
                raise ImageError(f"{name} has no pages")
            pages = []
            for index in range(len(doc)):
                page = doc[index]
                try:
                    scale = _scale(page.get_size(), name, index, max_pixels)
                    pages.append(to_rgb8(page.render(scale=scale).to_numpy(), f"{name} page {index}"))  # BGR(A) -> RGB
                finally:
                    page.close()
            return pages
        finally:
            doc.close()


def _scale(size, name, index, max_pixels):
    width, height = size
    if not max_pixels or width * height * RENDER_SCALE**2 <= max_pixels:
        return RENDER_SCALE
    scale = (max_pixels / (width * height)) ** 0.5 * 0.999  # ceil-rounding of the pixel size stays under
    if scale < MIN_RENDER_SCALE:
        raise ImageError(f"{name} page {index} ({width:.0f}x{height:.0f} pt) is too large to render within "
                         f"{max_pixels} pixels; raise Predict.max_image_pixels")
    return scale
