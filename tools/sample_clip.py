"""A generated sample clip for the demo and the tests: a skier gliding down a snowy slope (drawn with OpenCV,
encoded as H.264 with PyAV so that it previews in the browser too)."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


def skier_frame(i: int, frames: int, size: int) -> np.ndarray:
    """One BGR frame: sky gradient, a slope, two trees and a skier moving left to right and downhill."""
    s = size / 256
    t = i / max(frames - 1, 1)
    sky = np.linspace(235, 150, size, dtype=np.float32)[:, None, None] * np.array([1.0, 0.85, 0.6], np.float32)
    frame = np.broadcast_to(sky, (size, size, 3)).astype(np.uint8).copy()
    slope = np.array([[0, int(110 * s)], [size, int(200 * s)], [size, size], [0, size]], np.int32)
    cv2.fillPoly(frame, [slope], (245, 245, 240))
    for x, y in ((40, 150), (200, 215)):
        cv2.fillPoly(frame, [np.array([[int(x * s), int((y - 45) * s)], [int((x - 15) * s), int(y * s)],
                                       [int((x + 15) * s), int(y * s)]], np.int32)], (40, 110, 30))
    x = int((30 + 190 * t) * s)
    y = int((120 + 85 * t) * s)
    cv2.line(frame, (x - int(18 * s), y + int(26 * s)), (x + int(22 * s), y + int(32 * s)), (30, 30, 200), max(1, int(3 * s)))
    cv2.rectangle(frame, (x - int(6 * s), y - int(4 * s)), (x + int(6 * s), y + int(22 * s)), (160, 60, 20), -1)
    cv2.circle(frame, (x, y - int(10 * s)), max(2, int(6 * s)), (120, 170, 230), -1)
    return frame


def write_sample_clip(path: Path, frames: int = 48, size: int = 256, fps: float = 16.0) -> Path:
    """Write the clip as mp4 (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import av

    handle, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(handle)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": "18"})
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for i in range(frames):
                rgb = cv2.cvtColor(skier_frame(i, frames, size), cv2.COLOR_BGR2RGB)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, "rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
    return path
