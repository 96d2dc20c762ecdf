"""Read a mammogram DICOM into display intensities in [0, 1].

The DICOM grey-scale pipeline, in the standard's order (PS3.3 C.11, PS3.4 N.2):

1. decode the stored pixels (pydicom 3; JPEG 2000 through pylibjpeg + pylibjpeg-openjpeg,
   JPEG-LS through pylibjpeg-libjpeg or pyjpegls, gdcm as a fallback for all);
2. modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence);
3. VOI LUT Sequence, or a window (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), or,
   when the file has neither, a fixed map of the stored bit depth's range (or percentiles);
4. Presentation LUT: a Presentation LUT Sequence, or MONOCHROME1 inversion / a Presentation LUT
   Shape of INVERSE (inverted once either way: INVERSE is how a MONOCHROME1 image declares it).

Steps 2-4 are pydicom's (``apply_modality_lut``, ``apply_voi`` / ``apply_windowing``,
``apply_presentation_lut``); this module only scales each output range to [0, 1] and decides
the fallback when a file has no VOI.

The output is float32 (H, W) in [0, 1] where 1 is bright (dense tissue white), together
with a :class:`DicomInfo` holding the header facts a loader needs (laterality, view,
bit depth, photometric interpretation, which window was used).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi, apply_windowing, get_decoder
from pydicom.valuerep import DSfloat

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


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _window_range(ds, index: int = 0) -> tuple[float, float]:
    """(output of the lowest input, output of the highest) of pydicom's window for ``ds``."""
    lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, index=index)
    return float(lo), float(hi)


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM window to [0, 1] (PS3.3 C.11.2.1.2), by pydicom's ``apply_windowing``.

    x: array of modality values; center, width in the same units; function is LINEAR,
    LINEAR_EXACT or SIGMOID. Returns float32 of x's shape in [0, 1].
    """
    function = (function or "LINEAR").upper()
    if function not in _VOI_FUNCTIONS:
        raise ValueError(f"unknown VOI LUT function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")
    if width < (1 if function == "LINEAR" else np.finfo(float).tiny):
        raise ValueError(f"{function} window width must be {'>= 1' if function == 'LINEAR' else '> 0'}, got {width}")
    ds = Dataset()  # the window alone, on a 16-bit unsigned output range (scaled to [0, 1] below)
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 16, 0
    ds.WindowCenter, ds.WindowWidth = DSfloat(center, auto_format=True), DSfloat(width, auto_format=True)
    ds.VOILUTFunction = function
    lo, hi = _window_range(ds)
    y = (apply_windowing(np.asarray(x, dtype=np.float64), ds) - lo) / (hi - lo)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _lut_indices_fixed(ds):
    """A header-only stand-in for ``ds`` whose 8-bit VOI LUT pydicom indexes correctly.

    pydicom 3.0's ``apply_voi`` builds its index array in the LUT's output type, so an 8-bit
    LUT with more than 256 entries wraps every input past 255. Declaring 16 bits only widens
    that array: the entries (read as 16-bit words or a US list either way) are unchanged.
    """
    item = copy.deepcopy(ds.VOILUTSequence[0])
    item.LUTDescriptor = [item.LUTDescriptor[0], item.LUTDescriptor[1], 16]
    out = Dataset()
    out.VOILUTSequence = [item]
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    out.set_original_encoding(*ds.original_encoding)
    return out


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, str] | None:
    """The file's VOI LUT Sequence (preferred) or first window, in [0, 1]; None when it has neither.

    pydicom maps the values (``apply_voi`` / ``apply_windowing``, the two halves of
    ``apply_voi_lut``); the output range is the LUT's bit depth, or for a window the stored range
    carried through the modality LUT (PS3.3 C.11.2.1.2), scaled here to [0, 1].
    """
    seq = ds.get("VOILUTSequence")
    lut_ok = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]  # pydicom's own test
    if lut_ok:
        bits = int(seq[0].LUTDescriptor[2])
        entries = int(seq[0].LUTDescriptor[0]) or 2 ** 16
        source = _lut_indices_fixed(ds) if bits == 8 and entries > 256 else ds
        y = apply_voi(np.rint(values).astype(np.int64), source, index=0)   # a LUT takes integer inputs
        return np.clip(y / (2.0 ** bits - 1), 0, 1).astype(np.float32), "voi_lut"
    if not ("WindowCenter" in ds and "WindowWidth" in ds):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function not in _VOI_FUNCTIONS:
        raise ValueError(f"unknown VOI LUT function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")
    lo, hi = _window_range(ds)
    y = (apply_windowing(values, ds, index=0) - lo) / (hi - lo)
    return np.clip(y, 0, 1).astype(np.float32), f"window:{function}"


def _present(y: np.ndarray, ds, photometric: str) -> tuple[np.ndarray, bool]:
    """(P-values in [0, 1] with 1 = bright, inverted?) after the Presentation LUT, by pydicom.

    pydicom's ``apply_presentation_lut`` scales its input by the image's own min and max; the
    two pinned end values make that the fixed [0, 1] map of the standard (so INVERSE is 1 - y,
    not max(y) - y). MONOCHROME1 without a Presentation LUT is inverted here; with a Shape of
    INVERSE it is inverted once, by that shape.
    """
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    seq = ds.get("PresentationLUTSequence")
    if seq or shape == "INVERSE":
        pinned = np.concatenate([y.ravel().astype(np.float64), [0.0, 1.0]])
        out = apply_presentation_lut(pinned, ds)[:-2].reshape(y.shape).astype(np.float64)
        if seq:
            out = out / (2.0 ** int(seq[0].LUTDescriptor[2]) - 1)
        return np.clip(out, 0, 1).astype(np.float32), shape == "INVERSE"
    if photometric == "MONOCHROME1":
        return (1.0 - y).astype(np.float32), True
    return y, False


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

    voi = _voi(values, ds) if use_window else None
    if voi is not None:
        y, intensity = voi
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

    y, inverted = _present(y, ds, photometric)
    info = DicomInfo(
        path=str(path), rows=int(stored.shape[0]), columns=int(stored.shape[1]), bits_stored=bits,
        photometric=photometric, transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        laterality=_laterality(ds), view=_view(ds), patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"), series_uid=_text(ds, "SeriesInstanceUID"),
        series_description=_text(ds, "SeriesDescription"), intensity=intensity, inverted=inverted)
    return y, info
