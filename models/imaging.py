"""One preprocessing path for training and serving: DICOM or PNG/JPEG pixels -> model input.

Steps, in order (documented in ``docs/model.md``):

1. **Pixels to display values in [0, 1].** DICOM: the Modality LUT (RescaleSlope/Intercept or a
   Modality LUT Sequence), then the VOI LUT or the first window (centre/width); without either, an
   8-bit image keeps its full 0..255 range and a deeper one gets a robust 0.5-99.5 percentile
   window. MONOCHROME1 is inverted so that bone is bright. PNG/JPEG: RGB becomes luminance; 8-bit
   is divided by 255; 16-bit gets the same percentile window as deep DICOM. So an 8-bit DICOM
   without a window and a PNG of its pixels give the same values.
2. **Crop to the lungs, then letterbox to a square**: the lung model (``models.lungs``) gives
   the two lungs' bounding box with a margin; that crop is padded with black, centred, to a
   square (aspect ratio kept); :class:`Letterbox` remembers the geometry, crop included, so
   Grad-CAM maps back to the whole source image.
3. **Resize** to the model's input size: block-average decimation by an integer factor first
   (fast on 3000-pixel images), then bilinear.
4. **Normalise** inside the model (its first layers, recorded in the card): ``unit`` keeps
   [0, 1]; ``tf`` maps to [-1, 1] (Xception, InceptionV3); ``caffe`` is BGR mean subtraction on
   0..255 (VGG16, ResNet50); ``torch`` is ImageNet mean/std (DenseNet121). ImageNet bases get the
   grey image repeated to 3 channels.

This module uses numpy, pydicom and Pillow only; TensorFlow is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut


class UnreadableImageError(ValueError):
    """A file that is neither a DICOM image nor a PNG/JPEG image we can read."""


def _window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return np.clip((values.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    # On a decimated copy: percentiles of a 7.5-megapixel image are slow and no more robust.
    step = max(1, int(np.sqrt(values.size / 250_000)))
    low, high = np.percentile(values[::step, ::step], [0.5, 99.5])
    return _window(values, float(low), float(high))


def _modality(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT in float32 (pydicom's returns float64, twice the memory of a 15 MB DX)."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(raw, ds), np.float32)
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    values = raw.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
    return values


def dicom_to_image(ds: Dataset) -> np.ndarray:
    """Display values in [0, 1] (float32, 2-D) from a DICOM image, bone bright.

    Raises
    ------
    UnreadableImageError
        If the dataset has no single-frame grey or colour image.
    """
    if "PixelData" not in ds:
        raise UnreadableImageError("the dataset has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoder missing or corrupt stream
        raise UnreadableImageError(f"cannot decode pixel data: {exc}") from exc
    if int(ds.get("NumberOfFrames") or 1) > 1:
        raw = raw[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim == 3:  # colour secondary captures: use luminance
        rgb = raw.astype(np.float32)
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return _window(gray, 0, 255 if ds.BitsStored <= 8 else (1 << ds.BitsStored) - 1)
    if raw.ndim != 2:
        raise UnreadableImageError(f"unexpected pixel array shape {raw.shape}")
    values = _modality(raw, ds)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        values = apply_voi_lut(values, ds, index=0)
        image = _window(values, 0, (1 << int(lut.LUTDescriptor[2])) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        centre = float(np.ravel(ds.WindowCenter)[0])
        width = max(1.0, float(np.ravel(ds.WindowWidth)[0]))
        image = _window(values, centre - width / 2, centre + width / 2)
    elif int(ds.get("BitsStored", 8)) <= 8 and values.max() <= 255 and values.min() >= 0:
        image = _window(values, 0, 255)
    else:
        image = _percentile_window(values)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def pil_to_image(img: Image.Image) -> np.ndarray:
    """Display values in [0, 1] from a PNG/JPEG image (any size, 8/16-bit, grey or RGB)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(img, dtype=np.float32)
        if values.max() <= 255:
            return _window(values, 0, 255)
        return _percentile_window(values)
    if img.mode != "L":
        img = img.convert("L")  # ITU-R 601 luminance, as for colour DICOM
    return np.asarray(img, dtype=np.float32) / 255.0


def colourful(rgb: np.ndarray) -> bool:
    """True for a real colour picture (a heatmap, a photo), not grey stored as RGB.

    A pixel is coloured when its channels differ by more than 10% of the range; a radiograph
    saved as RGB has none, a Grad-CAM overlay has them everywhere the map is warm.
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        return False
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    small = rgb[::step, ::step, :3].astype(np.float32)
    top = 255.0 if small.max() <= 255 else float(small.max())
    spread = (small.max(axis=-1) - small.min(axis=-1)) / top
    return bool((spread > 0.1).mean() > 0.02)


def is_colour(source: Path | Dataset) -> bool:
    """Whether a DICOM dataset or an image file holds a colour picture (see :func:`colourful`).

    Grey images are told from their header alone (SamplesPerPixel, PIL's mode): only a file that
    says it is colour has its pixels read to see whether they really are.
    """
    try:
        if isinstance(source, Dataset):
            if int(source.get("SamplesPerPixel", 1)) < 3:
                return False
            return colourful(np.asarray(source.pixel_array))
        path = Path(source)
        if is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom"):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if int(header.get("SamplesPerPixel", 1)) < 3:
                return False
            return is_colour(pydicom.dcmread(path))
        with Image.open(path) as img:  # lazy: the mode comes from the header
            if img.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return False
            return colourful(np.asarray(img.convert("RGB")))
    except Exception:
        return False  # unreadable: load_image says why


def is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def load_image(path: Path) -> np.ndarray:
    """Read a DICOM, PNG or JPEG file into display values in [0, 1].

    Raises
    ------
    UnreadableImageError
        With the file name and the reason.
    """
    return read_image(path)[0]


def read_image(path: Path) -> tuple[np.ndarray, Dataset | None]:
    """:func:`load_image`, and the DICOM dataset it was read from (None for PNG/JPEG), so a
    caller that needs header attributes too reads the file once."""
    path = Path(path)
    try:
        if is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom"):
            ds = pydicom.dcmread(path)
            return dicom_to_image(ds), ds
        with Image.open(path) as img:
            img.load()
            return pil_to_image(img), None
    except UnreadableImageError as exc:
        raise UnreadableImageError(f"{path}: {exc}") from exc
    except IsADirectoryError as exc:
        raise UnreadableImageError(f"{path}: is a folder, not an image") from exc
    except FileNotFoundError as exc:
        raise UnreadableImageError(f"{path}: no such file") from exc
    except Exception as exc:
        # The library's own words stay on the exception chain (shown with --verbose).
        raise UnreadableImageError(f"{path}: not a DICOM, PNG or JPEG image") from exc


def image_kind(path: Path) -> str | None:
    """ "dicom", "png" or "jpeg" from the first bytes of a file (None: none of them, or not a
    readable file): a check cheap enough to run on every input before loading a model."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if Path(path).suffix.lower() in (".dcm", ".dicom") and head:
        return "dicom"  # a Part 10 file without its preamble; pydicom decides
    return None


@dataclass(frozen=True)
class CropBox:
    """A rectangle in source pixels: rows ``top:top+rows``, columns ``left:left+cols``."""

    top: int
    left: int
    rows: int
    cols: int

    @classmethod
    def whole(cls, shape: tuple[int, ...]) -> CropBox:
        return cls(0, 0, int(shape[0]), int(shape[1]))

    def apply(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.top + self.rows, self.left : self.left + self.cols]


@dataclass(frozen=True)
class Letterbox:
    """How a source image (or a crop of it) was padded to a square and scaled to the input.

    ``source_shape`` is the shape of what was letterboxed; when that was a crop, ``crop`` says
    where it lies in the whole image (``full_shape``), so maps go back to the whole image.
    """

    source_shape: tuple[int, int]
    side: int  # side of the padded square, in source pixels
    top: int
    left: int
    size: int  # model input side
    crop: CropBox | None = None
    full_shape: tuple[int, int] | None = None

    @classmethod
    def for_shape(cls, shape: tuple[int, int], size: int) -> Letterbox:
        rows, cols = shape
        side = max(rows, cols)
        return cls((rows, cols), side, (side - rows) // 2, (side - cols) // 2, size)

    def crop_to_source(self, square: np.ndarray, shrink: int = 1) -> np.ndarray:
        """Map an array over the padded square (any resolution) back to the source geometry.

        With ``shrink`` > 1 the result has the shape :func:`decimate` gives the source image for
        the same factor, so the two overlay pixel for pixel. For a crop, the result covers the
        whole image, zero outside the crop.
        """
        img = Image.fromarray(square.astype(np.float32), mode="F")
        side = -(-self.side // shrink)
        full = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))
        rows, cols = self.source_shape[0] // shrink, self.source_shape[1] // shrink
        top, left = self.top // shrink, self.left // shrink
        region = full[top : top + rows, left : left + cols]
        if self.crop is None or self.full_shape is None:
            return region
        out = np.zeros((self.full_shape[0] // shrink, self.full_shape[1] // shrink), np.float32)
        r0, c0 = self.crop.top // shrink, self.crop.left // shrink
        part = region[: out.shape[0] - r0, : out.shape[1] - c0]
        out[r0 : r0 + part.shape[0], c0 : c0 + part.shape[1]] = part
        return out


def decimate(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-average by an integer factor (trailing rows/columns that do not fill a block go)."""
    if factor <= 1:
        return image
    rows, cols = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    # Adding the factor² strided views is 5x faster than a mean over two axes of a reshaped
    # view (6 against 35 ms for a 2500x3000 film at 3), and equal to float32 rounding (2e-7).
    out = np.zeros((rows // factor, cols // factor), np.float32)
    for i in range(factor):
        for j in range(factor):
            out += image[i:rows:factor, j:cols:factor]
    return out / np.float32(factor * factor)


def shrink_factor(shape: tuple[int, ...], max_side: int) -> int:
    """Smallest integer factor that brings the longer side to ``max_side`` or less (0: none)."""
    if max_side <= 0:
        return 1
    return max(1, -(-max(int(shape[0]), int(shape[1])) // max_side))


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Pad ``image`` to a centred square and resize it to ``size``×``size`` (float32)."""
    box = Letterbox.for_shape((int(image.shape[0]), int(image.shape[1])), size)
    # Decimate before padding: the same result as padding first, on far fewer pixels.
    factor = max(1, box.side // (2 * size))
    small = decimate(image, factor)
    side = -(-box.side // factor)
    square = np.zeros((side, side), np.float32)
    top, left = box.top // factor, box.left // factor
    square[top : top + small.shape[0], left : left + small.shape[1]] = small
    resized = Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0), box


#: How the crop's grey values are standardised before the model (the card's ``intensity``).
INTENSITIES = ("none", "equalised")


def equalise(values: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation of [0, 1] values: each value becomes the share of pixels at or below.

    Inside the lung crop it takes away most of what exposure, detector and processing (LUT,
    unsharp masking) make of a hospital's films, which a model could otherwise learn as the
    hospital.
    """
    flat = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
    hist, edges = np.histogram(flat, bins=bins, range=(0.0, 1.0))
    cdf = np.cumsum(hist).astype(np.float64) / max(flat.size, 1)
    return np.interp(flat, edges[1:], cdf).astype(np.float32)


def prepare(
    image: np.ndarray, size: int, crop: CropBox | None = None, intensity: str = "none"
) -> tuple[np.ndarray, Letterbox]:
    """Full path for one image: crop (the lung box), intensity, letterbox and resize.

    Returns ``(size, size, 1)`` in [0, 1] and the geometry to map heatmaps back to ``image``.
    ``intensity`` "equalised" equalises the crop's histogram (:func:`equalise`) before the
    letterbox, so the padding stays black. Normalisation and grey-to-RGB happen inside the model
    (its first layers), so training and serving feed it exactly this tensor.
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be one of {INTENSITIES}, not {intensity!r}")
    if crop is None:
        region = equalise(image) if intensity == "equalised" else image
        square, box = letterbox(region, size)
        return square[..., None], box
    region = crop.apply(image)
    square, box = letterbox(equalise(region) if intensity == "equalised" else region, size)
    full = (int(image.shape[0]), int(image.shape[1]))
    box = Letterbox(box.source_shape, box.side, box.top, box.left, size, crop, full)
    return square[..., None], box
