"""The pictures of the node-docs pages (tools/node_docs.py), drawn with OpenCV: which frames each cross-frame mode
attends to, TokenFlow's keyframes, and how FateZero's blend mask joins the source and the edit."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sample_clip import skier_frame
from video_edit.kernels.attention import CROSS_FRAME_MODES, reference_frames

INK, PAPER, ACCENT, MUTED = (40, 40, 40), (255, 255, 255), (220, 110, 40), (215, 215, 215)  # BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX


def canvas(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), PAPER, np.uint8)


def text(image: np.ndarray, words: str, x: int, y: int, scale: float = 0.6, color=INK) -> None:
    cv2.putText(image, words, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def sparse_causal_modes(frames: int = 8, cell: int = 26) -> np.ndarray:
    """Four grids, one per mode: row = the frame whose queries attend, column = a frame it takes keys from."""
    modes = CROSS_FRAME_MODES
    grid = frames * cell
    image = canvas(len(modes) * (grid + 60) + 40, grid + 120)
    for m, mode in enumerate(modes):
        left, top = 50 + m * (grid + 60), 60
        text(image, mode, left, 35, 0.7)
        refs = reference_frames(frames, mode).tolist()
        for row in range(frames):
            for col in range(frames):
                color = ACCENT if col in refs[row] else MUTED
                cv2.rectangle(image, (left + col * cell + 1, top + row * cell + 1),
                              (left + (col + 1) * cell - 2, top + (row + 1) * cell - 2), color, -1)
        text(image, "keys from frame ->", left, top + grid + 25, 0.5)
    text(image, "rows: the frame attending", 50, grid + 100, 0.5)
    return image


def tokenflow_keyframes(frames: int = 16, chunk: int = 8, cell: int = 48) -> np.ndarray:
    """Frames in chunks, one random keyframe per chunk edited together, every other frame taking its
    self-attention output from the nearest keyframes along the source's token correspondences."""
    rng = np.random.default_rng(1)
    keys = [start + int(rng.integers(chunk)) for start in range(0, frames, chunk)]
    image = canvas(frames * cell + 80, 230)
    text(image, f"{frames} frames, keyframe_chunk_size {chunk}: one keyframe per chunk (drawn again every step)",
         20, 30, 0.55)
    top = 110
    for f in range(frames):
        x = 40 + f * cell
        color = ACCENT if f in keys else MUTED
        cv2.rectangle(image, (x, top), (x + cell - 6, top + cell - 6), color, -1)
        text(image, str(f), x + 8, top + cell + 18, 0.45)
        if f not in keys:
            for k in keys:
                if abs(k - f) <= chunk:
                    cv2.arrowedLine(image, (40 + k * cell + cell // 2 - 3, top - 4),
                                    (x + cell // 2 - 3, top - 4), (150, 150, 150), 1, cv2.LINE_AA, tipLength=0.02)
    for start in range(0, frames, chunk):
        x = 40 + start * cell
        cv2.line(image, (x - 3, top - 30), (x - 3, top + cell + 25), INK, 1)
    text(image, "blue: keyframes, edited with attention across all keyframes; grey: frames that take the "
                "keyframes' tokens", 20, 215, 0.5)
    return image


def fatezero_blend_mask(size: int = 192) -> np.ndarray:
    """Source frame, the blend word's cross-attention, the thresholded mask, and the blended result."""
    source = skier_frame(20, 48, size)
    attention = np.zeros((size, size), np.float32)
    moved = [np.abs(source.astype(int) - skier_frame(i, 48, size).astype(int)).sum(-1) > 60 for i in (0, 47)]
    skier = moved[0] & moved[1]  # differs from the frames with the skier elsewhere: the skier now
    attention[skier] = 1.0
    attention = cv2.GaussianBlur(attention, (0, 0), size / 24)
    attention /= attention.max()
    mask = attention > 0.3
    edit = source.copy()
    edit[skier] = (edit[skier] * 0.3 + np.array([200, 60, 200]) * 0.7).astype(np.uint8)
    blended = np.where(mask[..., None], edit, source)
    panels = [(source, "source frame"), (cv2.applyColorMap((attention * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS),
                                         "cross-attn of blend_words"),
              (np.repeat((mask * 255).astype(np.uint8)[..., None], 3, -1), "mask (> mask_threshold)"),
              (blended, "edit inside, source outside")]
    image = canvas(len(panels) * (size + 30) + 30, size + 70)
    for i, (panel, label) in enumerate(panels):
        x = 30 + i * (size + 30)
        image[40:40 + size, x:x + size] = panel
        text(image, label, x, 28, 0.48)
    return image


PICTURES = {"sparse_causal_modes.png": sparse_causal_modes, "tokenflow_keyframes.png": tokenflow_keyframes,
            "fatezero_blend_mask.png": fatezero_blend_mask}


def write_pictures(folder: Path) -> list[Path]:
    paths = []
    for name, draw in PICTURES.items():
        path = Path(folder) / name
        cv2.imwrite(str(path), draw())
        paths.append(path)
    return paths
