"""Read a mammogram DICOM into display intensities in [0, 1].

The DICOM grey-scale pipeline, in the standard's order (PS3.3 C.11, PS3.4 N.2):

1. decode the stored pixels (pydicom 3; JPEG 2000 through pylibjpeg + pylibjpeg-openjpeg,
   JPEG-LS through pylibjpeg-libjpeg or pyjpegls, gdcm as a fallback for all);
2. modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence);
3. VOI LUT Sequence, or a window (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), or,
   when the file has neither, a fixed map of the stored bit depth's range (or percentiles);
4. MONOCHROME1 inversion, or a Presentation LUT Shape of INVERSE (inverted once either way).

The output is float32 (H, W) in [0, 1] where 1 is bright (dense tissue white), together
with a :class:`DicomInfo` holding the header facts a loader needs (laterality, view,
bit depth, photometric interpretation, which window was used).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

from ..errors import SgcError

__all__ = ["DicomInfo", "DicomDecodeError", "read_dicom", "read_header", "window", "decoder_hint"]

# Transfer syntax UID -> (name, packages that can decode it). Used for error messages.
_DECODERS = {
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg + pylibjpeg-openjpeg, or python-gdcm"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg + pylibjpeg-openjpeg, or python-gdcm"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", "pylibjpeg + pylibjpeg-libjpeg, pyjpegls, or python-gdcm"),
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", "pillow, pylibjpeg + pylibjpeg-libjpeg, or python-gdcm"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "numpy (built into pydicom), or pylibjpeg-rle"),
    "1.2.840.10008.1.2": ("Implicit VR Little Endian, uncompressed", "pydicom itself"),
    "1.2.840.10008.1.2.1": ("Explicit VR Little Endian, uncompressed", "pydicom itself"),
    "1.2.840.10008.1.2.2": ("Explicit VR Big Endian, uncompressed", "pydicom itself"),
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""}


class DicomDecodeError(SgcError, RuntimeError):
    """A DICOM file could not be read or decoded; the message says which file and why."""


@dataclass
class DicomInfo:
    """Header facts of one image. Sizes in pixels; ``bits_stored`` from (0028,0101)."""

    path: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str                 # MONOCHROME1 or MONOCHROME2
    transfer_syntax: str             # UID
    laterality: str | None           # "L", "R" or None when the header has none
    view: str | None                 # "CC", "MLO", ... or None
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    series_description: str | None
    intensity: str                   # how values were mapped to [0, 1]: "voi_lut", "window:LINEAR", "bits", ...
    inverted: bool                   # True if MONOCHROME1 / INVERSE flipped the grey scale


def decoder_hint(transfer_syntax: str) -> str:
    """Human-readable name of a transfer syntax and the packages that decode it."""
    name, packages = _DECODERS.get(str(transfer_syntax), ("unknown", "no known Python package"))
    return f"transfer syntax {transfer_syntax} ({name}); decodable with: {packages}"


def _text(ds, keyword) -> str | None:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


def _laterality(ds) -> str | None:
    # ImageLaterality (0020,0062) is the per-image tag; Laterality (0020,0060) the series one.
    for keyword in ("ImageLaterality", "Laterality", "FrameLaterality"):
        value = _text(ds, keyword)
        if value and value.upper()[0] in "LR":
            return value.upper()[0]
    return None


def _view(ds) -> str | None:
    value = _text(ds, "ViewPosition")
    if value:
        return value.upper()
    seq = ds.get("ViewCodeSequence")
    if seq:
        meaning = str(seq[0].get("CodeMeaning", "")).lower()
        for key, code in (("cranio-caudal", "CC"), ("medio-lateral oblique", "MLO"),
                          ("medio-lateral", "ML"), ("latero-medial", "LM")):
            if key in meaning:
                return code
    return None


def read_header(path) -> pydicom.Dataset:
    """Read the header only (no pixels). Raises :class:`DicomDecodeError` naming the file."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except FileNotFoundError:
        raise DicomDecodeError(f"{path}: file not found") from None
    except Exception as exc:  # pydicom raises several types for damaged files
        raise DicomDecodeError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); "
                               "is the file complete (re-download it) and really DICOM?") from exc


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM window to [0, 1] (PS3.3 C.11.2.1.2).

    x: array of modality values; center, width in the same units; function is LINEAR,
    LINEAR_EXACT or SIGMOID. Returns float32 of x's shape in [0, 1].
    """
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"LINEAR window width must be >= 1, got {width}")
        y = (x - (center - 0.5)) / max(width - 1, 1e-12) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"LINEAR_EXACT window width must be > 0, got {width}")
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"SIGMOID window width must be > 0, got {width}")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise ValueError(f"unknown VOI LUT function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _first(value):
    """First value of a possibly multi-valued DICOM element, as float."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _expected_pixel_bytes(ds) -> int | None:
    """Bytes of uncompressed pixel data the header announces (rows x columns x frames x samples x bits)."""
    try:
        n = (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
             * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated))
    except (AttributeError, TypeError, ValueError):
        return None
    return (n + 7) // 8


def _truncation(ds, path, tsyntax: str) -> str | None:
    """A message when the file ends before its pixel data does, else None."""
    expected = _expected_pixel_bytes(ds)
    if expected is None:
        return None
    size = Path(path).stat().st_size
    if "PixelData" not in ds:
        return (f"{path}: truncated or incomplete file: its header describes a {ds.Rows}x{ds.Columns} image "
                f"({expected} bytes of pixel data expected) but the file ends after {size} bytes, before "
                "any pixel data. Re-download or re-copy the file")
    have = len(ds.PixelData) if tsyntax in _NATIVE else None
    if have is not None and have < expected:
        return (f"{path}: truncated or incomplete pixel data: {have} of {expected} expected bytes "
                f"({ds.Rows}x{ds.Columns}, {ds.BitsAllocated} bits allocated; the file has {size} bytes). "
                "Re-download or re-copy the file")
    return None


def _decode(ds, path) -> np.ndarray:
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    truncated = _truncation(ds, path, tsyntax)
    if truncated:
        raise DicomDecodeError(truncated)
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{path}: the file has no pixel data (is it a structured report "
                               "or presentation state rather than an image?)")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DicomDecodeError(f"{path}: unknown or unsupported {decoder_hint(tsyntax)}; "
                               "convert the file to an uncompressed or JPEG 2000 syntax "
                               "(e.g. with gdcmconv or dcmdjpeg)") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DicomDecodeError(f"{path}: no decoder installed for {decoder_hint(tsyntax)}. "
                               f"Install one of those packages ({missing}).")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomDecodeError(f"{path}: pixel data is damaged or truncated "
                               f"({type(exc).__name__}: {exc}; {decoder_hint(tsyntax)}); "
                               "re-download the file.") from exc
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomDecodeError(f"{path}: expected a greyscale image, got SamplesPerPixel="
                               f"{ds.SamplesPerPixel} ({ds.get('PhotometricInterpretation')})")
    if arr.ndim == 3:
        raise DicomDecodeError(f"{path}: multi-frame image ({arr.shape[0]} frames); "
                               "mammography loaders expect one frame per file")
    return arr


def read_dicom(path, *, use_window: bool = True, fallback: str = "bits",
               percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[np.ndarray, DicomInfo]:
    """Decode one DICOM image to float32 (H, W) in [0, 1], bright = dense.

    use_window: apply the file's VOI LUT Sequence or first window when present.
    fallback: how to map values when no VOI is used: ``"bits"`` divides the modality range
      of the stored bit depth (e.g. 0..2**16-1 for CBIS-DDSM), ``"percentile"`` stretches
      the given percentiles of the image to [0, 1], ``"minmax"`` the image's min and max.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except FileNotFoundError:
        raise DicomDecodeError(f"{path}: file not found") from None
    except Exception as exc:
        raise DicomDecodeError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); "
                               "is the file complete (re-download it) and really DICOM?") from exc
    stored = _decode(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)

    has_lut = "VOILUTSequence" in ds
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if use_window and has_lut:
        lut = ds.VOILUTSequence[0]
        out_bits = int(lut.LUTDescriptor[2])
        y = apply_voi(values, ds, index=0).astype(np.float64) / (2 ** out_bits - 1)
        y, intensity = np.clip(y, 0, 1).astype(np.float32), "voi_lut"
    elif use_window and has_window:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        y = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
        intensity = f"window:{function}"
    elif fallback == "bits":
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        lo, hi = apply_modality_lut(np.array([lo, hi], dtype=stored.dtype), ds).astype(np.float64)
        lo, hi = min(lo, hi), max(lo, hi)
        y, intensity = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32), "bits"
    elif fallback in ("percentile", "minmax"):
        q = percentiles if fallback == "percentile" else (0.0, 100.0)
        lo, hi = np.percentile(values, q)
        y = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
        intensity = fallback
    else:
        raise ValueError(f"fallback must be 'bits', 'percentile' or 'minmax', got {fallback!r}")

    inverted = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if inverted:
        y = 1.0 - y
    info = DicomInfo(
        path=str(path), rows=int(stored.shape[0]), columns=int(stored.shape[1]), bits_stored=bits,
        photometric=photometric, transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        laterality=_laterality(ds), view=_view(ds), patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"), series_uid=_text(ds, "SeriesInstanceUID"),
        series_description=_text(ds, "SeriesDescription"), intensity=intensity, inverted=inverted)
    return y, info
