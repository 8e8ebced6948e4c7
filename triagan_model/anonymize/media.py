"""Image and video I/O for the anonymiser (anonymize-spec 4.2 step 1, 4.7).

Images keep their size, mode and format: the EXIF orientation is applied on read (the output is
stored upright, orientation tag gone), greyscale is processed as RGB and stored as greyscale
again, alpha is put back unchanged, 16-bit, CMYK and palette images are converted with a
warning. Metadata (EXIF incl. GPS, XMP) is stripped; the ICC profile is kept; `keep_metadata`
keeps EXIF minus GPS. JPEG (and MPO, phones' JPEG with a preview image: its primary image, with
a warning) is written at `jpeg_quality` with 4:4:4 chroma. A multi-frame image (animated
WebP/PNG, multi-page TIFF) fails its file rather than losing frames 1.. silently.

Videos go through PyAV: every decoded frame (the decoder is flushed) is anonymised and encoded
with its own pts in the input's time base, at the input's frame rate; audio is dropped unless
`keep_audio`, which copies its packets unchanged. The encoder works in the input's time base, so
variable-frame-rate timestamps survive; a file whose muxed video packets differ in number from
the decoded frames fails, with no output.

Every output is written under a temporary name in its directory and renamed, through the
package's one writer (`triagan_model.atomic.atomic_path`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from triagan_model.atomic import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
CODECS = {"libx264": "yuv420p", "mpeg4": "yuv420p", "ffv1": "bgr0"}
_GPS_IFD = 0x8825
_ORIENTATION = 0x0112


class MediaError(ValueError):
    """An input that cannot be read (a per-file failure)."""


@dataclass
class ImageInfo:
    format: str  # PIL format name: JPEG, PNG, ...
    mode: str  # the mode to store: L, LA, RGB, RGBA
    alpha: np.ndarray | None
    icc: bytes | None
    exif: object | None  # PIL Image.Exif (orientation applied) or None
    warnings: list[str]


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageInfo]:
    """(H, W, 3) uint8 RGB, upright, and what is needed to write it back the same way."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes: list[str] = []
    try:
        with Image.open(path) as im:
            fmt, n_frames = im.format or "PNG", getattr(im, "n_frames", 1)
            if fmt == "MPO":  # a phone JPEG with a preview/depth image after the primary one
                fmt = "JPEG"
                if n_frames > 1:
                    notes.append(f"{path}: MPO with {n_frames} images: only the primary one is "
                                 "anonymised and written, as a plain JPEG")  # fmt: skip
            elif n_frames > 1:  # nothing silently dropped: frames 1.. would be lost
                raise MediaError(
                    f"{path}: {n_frames} frames: animated or multi-page images "
                    "are not supported; convert to a video or split the pages"
                )
            im.load()
            icc, exif = im.info.get("icc_profile"), im.getexif()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exn:
        if isinstance(exn, MediaError):
            raise
        raise MediaError(
            f"{path}: not a readable image ({exn}); replace or remove the file"
        ) from exn
    mode, alpha = im.mode, None
    if mode.startswith("I;16"):  # PIL's own conversion clips at 255: keep the high byte
        notes.append(f"{mode} image reduced to 8 bits (L) for anonymisation and output")
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
        mode = "L"
    if mode in ("I", "F", "CMYK", "P", "PA", "1", "YCbCr", "LAB", "HSV"):
        has_alpha = mode in ("PA",) or (mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha else "RGB")
        if mode == "P":  # the output is stored as full colour, not re-quantised
            notes.append(f"{path}: palette (P) image converted to {im.mode}; written as {im.mode}")
        elif mode != "1":
            notes.append(f"{mode} image converted to {im.mode} (8-bit) for anonymisation")
        mode = "L" if mode in ("I", "F", "1") else im.mode
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A")).copy()
    rgb = np.asarray(im.convert("RGB")).copy()
    exif.pop(_ORIENTATION, None)
    return rgb, ImageInfo(fmt, mode if mode in ("L", "LA", "RGB", "RGBA") else "RGB",
                          alpha, icc, exif, notes)  # fmt: skip


def encode_image(rgb: np.ndarray, info: ImageInfo, *, keep_metadata: bool = False,
                 jpeg_quality: int = 95) -> bytes:  # fmt: skip
    """The output file's bytes, in the input's format and mode."""
    from PIL import Image

    im = Image.fromarray(rgb, "RGB")
    if info.mode in ("L", "LA"):
        im = im.convert("L")
    if info.alpha is not None:
        im = im.convert("LA" if info.mode in ("L", "LA") else "RGBA")
        im.putalpha(Image.fromarray(info.alpha, "L"))
    fmt = info.format.upper()
    kwargs: dict = {}
    if info.icc:
        kwargs["icc_profile"] = info.icc
    if keep_metadata and info.exif is not None:
        exif = info.exif
        exif.pop(_GPS_IFD, None)  # location never survives
        kwargs["exif"] = exif.tobytes()
    if fmt == "JPEG":
        if im.mode in ("RGBA", "LA"):
            im = im.convert("RGB" if im.mode == "RGBA" else "L")
        kwargs.update(quality=jpeg_quality, subsampling=0)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


@dataclass
class VideoResult:
    frames_in: int
    frames_out: int
    fps: float
    audio: bool


def _open_video(path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exn:
        raise MediaError(
            f"{path}: not a readable video ({exn}); replace or remove the file"
        ) from exn
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: has no video stream")
    return container


def video_info(path) -> tuple[float, int]:
    """(frame rate, number of frames the stream declares, 0 if unknown)."""
    container = _open_video(path)
    try:
        s = container.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 25), int(s.frames or 0)
    finally:
        container.close()


def _encode(out, ostream, rgb: np.ndarray, pts: int | None, time_base) -> int:
    """Encode one frame; returns the number of packets muxed (encoders may delay them)."""
    import av

    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=ostream.pix_fmt)
    vf.pts, vf.time_base = pts, time_base
    return _mux(out, ostream.encode(vf))


def _mux(out, packets) -> int:
    n = 0
    for packet in packets:
        out.mux(packet)
        n += 1
    return n


def transcode_video(src, dst, process: Callable[[int, np.ndarray], np.ndarray], *,
                    codec: str = "libx264", crf: int = 18,
                    keep_audio: bool = False) -> VideoResult:  # fmt: skip
    """Decode every frame of `src`, `process(index, rgb)` it, encode to `dst` (atomic)."""
    import av

    if codec not in CODECS:
        raise ValueError(f"--codec must be one of {sorted(CODECS)}, not {codec!r}")
    container = _open_video(src)
    n_in = n_out = 0
    try:
        vin = container.streams.video[0]
        ain = container.streams.audio[0] if keep_audio and container.streams.audio else None
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        w, h = vin.codec_context.width, vin.codec_context.height
        if CODECS[codec] == "yuv420p" and (w % 2 or h % 2):
            raise MediaError(f"{src}: {w}x{h} has an odd side, which {codec} (4:2:0) cannot "
                             "encode; use --codec ffv1")  # fmt: skip
        with atomic_path(dst) as tmp:
            out = av.open(tmp, "w")
            try:
                ostream = out.add_stream(codec, rate=rate)
                ostream.width, ostream.height = w, h
                ostream.pix_fmt = CODECS[codec]
                ostream.time_base = vin.time_base
                # the encoder's own time base too: left at 1/rate, a variable-frame-rate input's
                # pts are rounded onto the rate grid, two frames share one and mpeg4 refuses it
                ostream.codec_context.time_base = vin.time_base
                if codec == "libx264":
                    ostream.options = {"crf": str(crf)}
                aout = out.add_stream_from_template(ain) if ain is not None else None
                streams = [vin] + ([ain] if ain is not None else [])
                for packet in container.demux(*streams):
                    if packet.stream is ain:
                        if packet.dts is not None:
                            packet.stream = aout
                            out.mux(packet)
                        continue
                    for frame in packet.decode():  # the None packet at the end flushes
                        n_in += 1
                        rgb = frame.to_ndarray(format="rgb24")
                        rgb = process(n_in - 1, rgb)
                        n_out += _encode(out, ostream, rgb, frame.pts, vin.time_base)
                # n_out counts the video packets really muxed (libx264, mpeg4 and ffv1 emit one
                # per frame, delayed or not), so a frame lost on the way shows as in != out
                n_out += _mux(out, ostream.encode(None))
            finally:
                out.close()
            if n_in == 0:
                raise MediaError(f"{src}: no decodable video frame (zero-size or truncated)")
            if n_out != n_in:  # raised inside atomic_path: the partial output is discarded
                raise MediaError(f"{src}: {n_in} frames decoded but {n_out} encoded; "
                                 "no output written")  # fmt: skip
    except av.error.FFmpegError as exn:
        raise MediaError(f"{src}: video decoding or encoding failed ({exn})") from exn
    finally:
        container.close()
    return VideoResult(n_in, n_out, float(rate), ain is not None)


def count_frames(path) -> tuple[int, list[int]]:
    """(frames, pts list) of a video, decoding everything (tests, checks)."""
    container = _open_video(path)
    try:
        pts = [f.pts for f in container.decode(video=0)]
    finally:
        container.close()
    return len(pts), pts


def warn_all(notes: list[str]) -> None:
    for n in notes:
        warnings.warn(n, stacklevel=2)
