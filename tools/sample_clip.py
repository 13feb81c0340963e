"""A generated sample clip for the demo, the tests and the shipped workflows: a skier gliding down a snowy slope
(drawn with OpenCV, encoded as H.264 with PyAV so that it previews in the browser too), and its depth maps.

``python tools/sample_clip.py`` writes the clips the workflows open with into workflows/input/ (drawn here, so
ours to license with the pack); the pack copies them into ComfyUI's input folder at start (nodes/video_io.py)."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


SAMPLE_FOLDER = Path(__file__).resolve().parents[1] / "workflows" / "input"
SAMPLE_CLIP = "video_edit_skier.mp4"  # long enough for every shipped workflow (tokenflow_long_clip: 240 frames)
SAMPLE_DEPTH = "video_edit_skier_depth.mp4"  # its depth maps, for make_your_video_depth
SAMPLE_FRAMES = 240


def skier_frame(i: int, frames: int, size: int, depth: bool = False) -> np.ndarray:
    """One BGR frame: sky gradient, a slope, two trees and a skier moving left to right and downhill; with
    ``depth``, the same scene as a depth map (near is bright: the slope brightens towards the viewer)."""
    s = size / 256
    t = i / max(frames - 1, 1)
    sky = np.linspace(235, 150, size, dtype=np.float32)[:, None, None] * np.array([1.0, 0.85, 0.6], np.float32)
    frame = np.broadcast_to(sky, (size, size, 3)).astype(np.uint8).copy()
    slope = np.array([[0, int(110 * s)], [size, int(200 * s)], [size, size], [0, size]], np.int32)
    if depth:
        frame[:] = 0
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [slope], 255)
        near = np.linspace(40, 230, size, dtype=np.float32)[:, None].repeat(size, 1).astype(np.uint8)
        frame[mask > 0] = near[mask > 0][:, None]
    else:
        cv2.fillPoly(frame, [slope], (245, 245, 240))
    tree, skis, body, head = ((150, 150, 150),) * 4 if depth else ((40, 110, 30), (30, 30, 200), (160, 60, 20),
                                                                 (120, 170, 230))
    for x, y in ((40, 150), (200, 215)):
        cv2.fillPoly(frame, [np.array([[int(x * s), int((y - 45) * s)], [int((x - 15) * s), int(y * s)],
                                       [int((x + 15) * s), int(y * s)]], np.int32)], tree)
    x = int((30 + 190 * t) * s)
    y = int((120 + 85 * t) * s)
    if depth:
        skis = body = head = (int(150 + 80 * t),) * 3  # the skier comes nearer
    cv2.line(frame, (x - int(18 * s), y + int(26 * s)), (x + int(22 * s), y + int(32 * s)), skis, max(1, int(3 * s)))
    cv2.rectangle(frame, (x - int(6 * s), y - int(4 * s)), (x + int(6 * s), y + int(22 * s)), body, -1)
    cv2.circle(frame, (x, y - int(10 * s)), max(2, int(6 * s)), head, -1)
    return frame


def write_sample_clip(path: Path, frames: int = 48, size: int = 256, fps: float = 16.0, depth: bool = False,
                      crf: int = 18) -> Path:
    """Write the clip (or its depth maps) as mp4 (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import av

    handle, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(handle)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for i in range(frames):
                rgb = cv2.cvtColor(skier_frame(i, frames, size, depth), cv2.COLOR_BGR2RGB)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, "rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise
    return path


def write_shipped_samples(folder: Path = SAMPLE_FOLDER) -> list[Path]:
    """The clips the shipped workflows open with: 240 frames of 256x256 at 16 fps, and its depth maps."""
    return [write_sample_clip(Path(folder) / SAMPLE_CLIP, SAMPLE_FRAMES, crf=28),
            write_sample_clip(Path(folder) / SAMPLE_DEPTH, SAMPLE_FRAMES, depth=True, crf=28)]


if __name__ == "__main__":
    for written in write_shipped_samples():
        print(written, written.stat().st_size, "bytes")
