"""Shared helpers for the data tests: where the real files are, and synthetic DICOM writers."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SGC_TEST_DATA", REPO.parent / "shared" / "data"))


def shared(*parts) -> Path:
    """Path under the shared real data; skips the test (with the reason) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data {path} not found; set SGC_TEST_DATA to the shared data folder")
    return path


def breast_phantom(rows: int = 96, cols: int = 64, *, side: str = "L", seed: int = 0) -> np.ndarray:
    """float (rows, cols) in [0, 1]: a half-ellipse 'breast' against the left (L) or right (R) edge."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    inside = ((r - rows / 2) / (0.42 * rows)) ** 2 + (c / (0.6 * cols)) ** 2 < 1
    image = np.where(inside, 0.55 + 0.25 * rng.random((rows, cols)), 0.02 * rng.random((rows, cols)))
    return image if side == "L" else image[:, ::-1].copy()


def write_dicom(path, image: np.ndarray, *, bits_stored: int = 12, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, voi_function: str | None = None,
                laterality: str | None = "L", view: str | None = "CC", patient_id: str = "PAT1",
                series_uid: str | None = None, series_description: str | None = None,
                slope: float | None = None, intercept: float | None = None, raw: bool = False,
                compress: str | None = None) -> Path:
    """Write a 16-bit-allocated greyscale DICOM. ``image`` in [0, 1] is scaled to 2**bits - 1
    (``raw=True`` writes the integers as given). ``compress``: None or a transfer syntax UID."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(image) if raw else np.round(np.asarray(image) * (2 ** bits_stored - 1))
    pixels = pixels.astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.PatientID = "MG", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    if series_description:
        ds.SeriesDescription = series_description
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    ds.PixelData = pixels.tobytes()
    if compress:
        ds.compress(compress, pixels)
    ds.save_as(path, enforce_file_format=True)
    return path
