"""DICOM pixel decoding and geometry: grayscale frames from any photometric interpretation and
transfer syntax the declared decoders handle, pixel spacing and frame rate from the header.
Undecodable syntaxes raise an error naming the file, the syntax and the package that decodes it."""

from __future__ import annotations

from pathlib import Path

import cv2
import pydicom
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from fedecho.data.errors import EchoDataError

__all__ = ["decode_grayscale", "dicom_fps", "dicom_spacing"]

def decode_grayscale(ds: Dataset, path: str | Path = "") -> np.ndarray:
    """Decode ``ds``'s pixel data to grayscale uint8: (T, H, W) if NumberOfFrames > 1 else (H, W).

    Raises :class:`EchoDataError` naming ``path`` when the transfer syntax cannot be decoded (with
    the package that would decode it), when decoding fails, or the photometric is unsupported.
    """
    if "PixelData" not in ds:
        raise EchoDataError.at(path, "no pixel data (PixelData (7FE0,0010) absent)")
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise EchoDataError.at(
            path, f"cannot decode transfer syntax {tsyntax.name} ({tsyntax}): {_no_decoder_hint(tsyntax)}"
        ) from None
    if not decoder.is_available:
        raise EchoDataError.at(
            path, f"cannot decode transfer syntax {tsyntax.name} ({tsyntax}): install {_package_for(tsyntax)} "
            f"(pydicom reports: {'; '.join(decoder.missing_dependencies)})",
        )  # fmt: skip
    plugins = ["pillow", ""] if tsyntax in (JPEGBaseline8Bit, JPEGExtended12Bit) else [""]
    plugins = [p for p in plugins if not p or p in decoder.available_plugins]
    for plugin in plugins:
        try:
            arr, meta = decoder.as_array(ds, as_rgb=False, decoding_plugin=plugin)
            break
        except Exception as err:  # noqa: BLE001 - every plugin failure is reported below
            error = err
    else:
        raise EchoDataError.at(
            path, f"pixel data could not be decoded ({tsyntax.name}, {tsyntax}): {error} -- the stream is corrupt "
            "or needs python-gdcm, which decodes some streams the installed plugins reject",
        )  # fmt: skip
    return _to_grayscale(arr, str(meta["photometric_interpretation"]), ds, path)


def _to_grayscale(arr: np.ndarray, photometric: str, ds: Dataset, path: str | Path) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        arr = (arr >> 8).astype(np.uint8) if arr.dtype != np.uint8 else arr
        photometric = "RGB"
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "u" and int(ds.get("BitsStored", 16)) <= 8:
            arr = arr.astype(np.uint8)
        else:
            low, high = float(arr.min()), float(arr.max())
            scaled = (arr.astype(np.float32) - low) * (255.0 / (high - low)) if high > low else arr * 0.0
            arr = np.rint(scaled).astype(np.uint8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = 255 - arr if photometric == "MONOCHROME1" else arr
    elif photometric in ("YBR_FULL", "YBR_FULL_422"):
        gray = arr[..., 0]
    elif photometric in ("YBR_PARTIAL_422", "YBR_PARTIAL_420"):
        luma = (arr[..., 0].astype(np.float32) - 16.0) * (255.0 / 219.0)
        gray = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    elif photometric == "RGB":
        flat = np.ascontiguousarray(arr.reshape(-1, arr.shape[-2], 3))
        gray = cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(arr.shape[:-1])
    else:
        raise EchoDataError.at(path, f"unsupported PhotometricInterpretation {photometric!r} after decoding")
    return np.ascontiguousarray(gray)


def _transfer_syntax(ds: Dataset) -> UID:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _package_for(tsyntax: UID) -> str:
    """The packages that decode a transfer syntax pydicom has a decoder for (all declared by FedEcho)."""
    if tsyntax in JPEG2000TransferSyntaxes or "2000" in tsyntax.name:
        return "pylibjpeg and pylibjpeg-openjpeg"
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        return "pylibjpeg and pylibjpeg-libjpeg"
    if tsyntax in RLETransferSyntaxes:
        return "pylibjpeg-rle (pydicom's own RLE decoder needs only numpy)"
    return "python-gdcm"


def _no_decoder_hint(tsyntax: UID) -> str:
    if tsyntax in MPEGTransferSyntaxes:
        return (
            "pydicom has no decoder for MPEG-2/H.264/HEVC video; the encapsulated stream needs PyAV "
            "(package 'av'), or re-export the study as JPEG or uncompressed"
        )
    return (
        f"pydicom {pydicom.__version__} has no decoder for it (private, retired or newer syntax); "
        "re-export the study as JPEG, JPEG 2000 or uncompressed"
    )


def dicom_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: first 2-D ultrasound region in cm, else PixelSpacing."""
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if region.get("RegionSpatialFormat") == 1 and region.get("PhysicalUnitsXDirection") == 3 \
                and region.get("PhysicalUnitsYDirection") == 3:  # fmt: skip
            dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
            if dx and dy:
                return abs(float(dy)) * 10.0, abs(float(dx)) * 10.0
    spacing = _number_list(ds, "PixelSpacing")
    return (spacing[0], spacing[1]) if len(spacing) == 2 and all(s > 0 for s in spacing) else None


def dicom_fps(ds: Dataset) -> float | None:
    """Frames per second: 1000 / FrameTime, else CineRate, else RecommendedDisplayFrameRate."""
    frame_time = _number_list(ds, "FrameTime")
    if frame_time and frame_time[0] > 0:
        return round(1000.0 / frame_time[0], 3)
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _number_list(ds, key)
        if rate and rate[0] > 0:
            return float(rate[0])
    return None


# --- scanning helpers ---------------------------------------------------------------------------


def _number_list(ds: Dataset, key: str) -> list[float]:
    try:
        value = ds.get(key)
        if value is None or value == "":
            return []
        return [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    except (TypeError, ValueError):
        return []
