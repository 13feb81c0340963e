"""Video file I/O: load a clip as an IMAGE batch, save an IMAGE batch as mp4 / webm / gif / webp.

Decoding uses OpenCV (Pillow for what FFmpeg cannot read). mp4 (H.264) and webm (VP9) are encoded with PyAV,
which ComfyUI ships, in yuv420p so that browsers play them; gif and webp use Pillow. Saves are atomic: frames
are written to a hidden temporary file next to the target and renamed into place, so a failed or interrupted
save leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from fractions import Fraction

import cv2
import numpy as np
import psutil
import torch
from PIL import Image

import folder_paths
from comfy_api.latest import io, ui

from .shared.files import check_name, confined_path, numbered_paths, save_atomically
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import VIDEO_EDIT_ALIASES, search_aliases

log = logging.getLogger(__name__)

CATEGORY = "video_edit/video"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".webp", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts")
SAVE_FORMATS = ("mp4", "webm", "gif", "webp")
MAX_SIZE = 8192
FALLBACK_FPS = 24.0  # assumed when a container reports no frame rate
# The clips the shipped workflows open with (tools/sample_clip.py draws them), read-only in the pack.
SAMPLE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "input")


# ----- loading -------------------------------------------------------------------------------------------------------

def install_sample_clips() -> list[str]:
    """Copy the pack's sample clips into ComfyUI's input folder, each only where no file of that name is there yet
    (never replacing one), so that every shipped workflow opens with its clip selected and previewed. Returns the
    paths written."""
    written = []
    for name in sorted(os.listdir(SAMPLE_FOLDER)) if os.path.isdir(SAMPLE_FOLDER) else []:
        target = os.path.join(folder_paths.get_input_directory(), name)
        if name.lower().endswith(VIDEO_EXTENSIONS) and not os.path.lexists(target):
            source = os.path.join(SAMPLE_FOLDER, name)
            save_atomically([(target, lambda path, source=source: shutil.copyfile(source, path))], "sample clip")
            written.append(target)
    return written


def list_input_videos() -> list[str]:
    """Video files directly in ComfyUI's input folder (the ``file`` choices of VE_LoadVideo); symlinks that lead
    out of ComfyUI's folders are left out, as they would be refused."""
    input_dir = folder_paths.get_input_directory()
    try:
        names = os.listdir(input_dir)
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith(VIDEO_EXTENSIONS)
                  and os.path.isfile(os.path.join(input_dir, n)) and confined_path(os.path.join(input_dir, n)))


def resolve_video_path(file: str | None, path: str | None) -> tuple[str, str]:
    """The file VE_LoadVideo reads (symlinks and ``..`` resolved) and the input that named it: ``path`` when set,
    else ``file``. Only files inside ComfyUI's input, output and temp folders are read; anything else is refused
    with one message that does not say whether the file exists."""
    for which, given in (("path", path), ("file", file)):
        if given and "\0" in given:
            raise ValueError(f"VE_LoadVideo: input '{which}' holds a NUL byte, which no file name can hold; remove it "
                             "(retype the name, or pick the video in 'file').")
    if path and path.strip():
        p = os.path.expanduser(path.strip().strip('"').strip("'"))
        if not os.path.isabs(p):
            p = os.path.join(folder_paths.get_input_directory(), p)
        which, given = "path", path.strip()
    elif file:
        p, which, given = folder_paths.get_annotated_filepath(file), "file", file
    else:
        raise ValueError("VE_LoadVideo: no video selected. Pick one in 'file' (upload a video into ComfyUI's "
                         "input folder) or set 'path' to a video file.")
    confined = confined_path(p)
    if confined is None:
        raise ValueError(f"VE_LoadVideo: input '{which}' ({given!r}) does not name a file inside ComfyUI's input, "
                         "output or temp folder, and only those are read. Upload the video (or copy it into the "
                         "input folder) and pick it in 'file', or give a path relative to the input folder.")
    return confined, which


def missing_video_message(video_path: str, which: str) -> str | None:
    """Why ``video_path`` (input ``which``) cannot be read as a file: it does not exist, or it is a folder, a pipe
    or a device; None when it is a regular file."""
    if os.path.isfile(video_path):
        return None
    fix = ("put the video into ComfyUI's input folder or pick another one in 'file'" if which == "file"
           else "give a path relative to ComfyUI's input folder, or one inside its output or temp folder")
    name = os.path.basename(video_path)
    if os.path.exists(video_path):
        return (f"VE_LoadVideo: input '{which}' names {name}, which is a folder, pipe or device, not a video file "
                f"({fix}).")
    return f"VE_LoadVideo: video not found for input '{which}': {name} ({fix})."


def _check_size(name: str, value: int) -> None:
    if value < 0 or value % 8:
        lo, hi = max(8, value // 8 * 8), (value // 8 + 1) * 8
        raise ValueError(f"VE_LoadVideo: {name}={value} is not a multiple of 8 (latents are 1/8 of the image size). "
                         f"Set {name} to {lo} or {hi}, or 0 to follow the source video.")


def target_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Output (width, height): both 0 keeps the source size floored to multiples of 8; one 0 follows the aspect."""
    if width == 0 and height == 0:
        return max(8, src_w // 8 * 8), max(8, src_h // 8 * 8)
    if width == 0:
        width = max(8, int(src_w * height / src_h) // 8 * 8)
    elif height == 0:
        height = max(8, int(src_h * width / src_w) // 8 * 8)
    return width, height


def fit_cover(frame: np.ndarray, width: int, height: int, resize: bool = True) -> np.ndarray:
    """Resize keeping the aspect ratio so the frame covers ``width x height``, then center-crop to it.

    With ``resize=False`` (width = height = 0: keep the source pixels) a large-enough frame is only center-cropped.
    """
    h, w = frame.shape[:2]
    if not resize and w >= width and h >= height:
        x0, y0 = (w - width) // 2, (h - height) // 2
        frame = frame[y0:y0 + height, x0:x0 + width]
    elif (w, h) != (width, height):
        scale = max(width / w, height / h)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        if (new_w, new_h) != (w, h):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            frame = cv2.resize(frame, (new_w, new_h), interpolation=interp)
        x0, y0 = (new_w - width) // 2, (new_h - height) // 2
        frame = frame[y0:y0 + height, x0:x0 + width]
    return np.ascontiguousarray(frame)


def _cv2_frames(video_path: str, want):
    """Frame rate and a generator of ``(index, RGB frame or None)``; frames ``want(index)`` rejects aren't converted."""
    cap = cv2.VideoCapture(video_path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(video_path)
    if not cap.isOpened():
        cap.release()
        return None

    def frames():
        try:
            index = 0
            while cap.grab():
                frame = None
                if want(index):
                    ok, frame = cap.retrieve()
                    if not ok or frame is None:
                        return
                    if frame.ndim == 2:
                        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                    frame = cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2RGB)
                yield index, frame
                index += 1
        finally:
            cap.release()

    return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), frames()


def _pil_frames(video_path: str, want):
    """Like ``_cv2_frames`` for animated images FFmpeg cannot decode (animated webp); None if Pillow can't open it."""
    try:
        image = Image.open(video_path)
        image.load()
    except Exception:
        return None
    duration = image.info.get("duration") or 0

    def frames():
        with image:
            for index in range(getattr(image, "n_frames", 1)):
                try:
                    image.seek(index)
                    frame = np.asarray(image.convert("RGB")) if want(index) else None
                except (OSError, ValueError, EOFError):  # truncated file: stop at the last good frame
                    return
                yield index, frame

    return (1000.0 / duration if duration else 0.0), frames()


BYTES_PER_PIXEL = 3 * (1 + 4)  # RGB, decoded as uint8, then the float32 IMAGE


def memory_limit_bytes(memory_limit_gb: float) -> float:
    """The most the decoded frames may take: ``memory_limit_gb`` (0: 80 %) of the RAM available now, never more
    than that RAM, whatever the input says (the server would be killed)."""
    available = psutil.virtual_memory().available
    return min(memory_limit_gb * 2**30, available) if memory_limit_gb > 0 else 0.8 * available


def probe_video(video_path: str) -> tuple[int, int, int]:
    """(frame count, width, height) as the container reports them; 0 where it does not say."""
    cap = cv2.VideoCapture(video_path, cv2.CAP_FFMPEG)
    try:
        if cap.isOpened():
            return tuple(max(0, int(cap.get(prop) or 0)) for prop in
                         (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    try:
        with Image.open(video_path) as image:
            return getattr(image, "n_frames", 1), image.width, image.height
    except Exception:
        return 0, 0, 0


def check_decoded_size(frames: int, width: int, height: int, limit: float, name: str) -> None:
    """Refuse, with the numbers, a request whose decoded frames would take more than ``limit`` bytes."""
    need = frames * width * height * BYTES_PER_PIXEL
    if need > limit:
        raise MemoryError(
            f"VE_LoadVideo: {frames} frames of {width}x{height} from '{name}' need about {need / 2**30:.1f} GiB of "
            f"RAM once decoded, over the limit of {limit / 2**30:.1f} GiB (memory_limit_gb, at most the RAM available "
            f"now). Load fewer frames (n_frames, frame_stride) or a smaller width/height, or raise memory_limit_gb "
            f"if RAM allows.")


def read_video(video_path: str, n_frames: int = 24, start_frame: int = 0, frame_stride: int = 2, width: int = 512,
               height: int = 512, which: str = "path", memory_limit_gb: float = 0.0) -> tuple[np.ndarray, float]:
    """Decode frames ``start_frame + i * frame_stride`` (``n_frames`` of them, 0 = all) as uint8 RGB ``[F,H,W,3]``.

    Returns the frames and the source frame rate. Raises ValueError naming the input to fix, and MemoryError
    before decoding (and while decoding, where the container did not tell) when the frames would take more than
    ``memory_limit_gb`` (0: 80 % of the available RAM; never more than the available RAM).
    """
    _check_size("width", width)
    _check_size("height", height)
    if n_frames < 0 or start_frame < 0 or frame_stride < 1:
        raise ValueError(f"VE_LoadVideo: need n_frames >= 0, start_frame >= 0 and frame_stride >= 1 "
                         f"(got {n_frames}, {start_frame}, {frame_stride}).")
    if problem := missing_video_message(video_path, which):
        raise ValueError(problem)
    name = os.path.basename(video_path)
    last = None if n_frames == 0 else start_frame + (n_frames - 1) * frame_stride
    limit = memory_limit_bytes(memory_limit_gb)
    count_hint, src_w, src_h = probe_video(video_path)
    if src_w and src_h:  # the estimate before decoding; the loop below checks as it goes, too
        available = max(0, (count_hint - start_frame - 1) // frame_stride + 1) if count_hint else 0
        wanted = min(n_frames, available) if n_frames and available else n_frames or available
        if wanted:
            check_decoded_size(wanted, *target_size(src_w, src_h, width, height), limit, name)

    def want(index: int) -> bool:
        return index >= start_frame and (index - start_frame) % frame_stride == 0

    frames: list[np.ndarray] = []
    count = 0  # frames seen in the file (stops at the last one needed)
    for open_frames in (_cv2_frames, _pil_frames):
        opened = open_frames(video_path, want)
        if opened is None:
            continue
        src_fps, source = opened
        size = None
        for index, frame in source:
            count = index + 1
            if frame is not None:
                if size is None:
                    size = target_size(frame.shape[1], frame.shape[0], width, height)
                check_decoded_size(len(frames) + 1, *size, limit, name)
                frames.append(fit_cover(frame, *size, resize=bool(width or height)))
            if last is not None and index >= last:
                break
        source.close()
        if count:
            break

    if count == 0:
        raise ValueError(f"VE_LoadVideo: '{name}' (input '{which}') could not be opened as a video; it is not a "
                         f"video file or its codec is unsupported. Re-encode it (e.g. to H.264 mp4) or pick "
                         f"another file.")
    if n_frames and len(frames) < n_frames:
        most = (count - start_frame - 1) // frame_stride + 1 if count > start_frame else 0
        fix = (f"lower n_frames to {most} (or lower frame_stride / start_frame), or set n_frames to 0 to take all "
               f"available frames" if most else f"lower start_frame below {count}")
        raise ValueError(f"VE_LoadVideo: '{name}' has only {count} frames, but n_frames={n_frames} with "
                         f"start_frame={start_frame} and frame_stride={frame_stride} needs {last + 1} frames; {fix}.")
    if not frames:
        raise ValueError(f"VE_LoadVideo: start_frame={start_frame} is past the end of '{name}' ({count} frames); "
                         f"lower start_frame below {count}.")
    if not (math.isfinite(src_fps) and src_fps > 0):
        log.warning("VE_LoadVideo: '%s' reports no frame rate; assuming %.0f fps", name, FALLBACK_FPS)
        src_fps = FALLBACK_FPS
    return np.stack(frames), src_fps


def select_frames(images: torch.Tensor, fps: float, n_frames: int, start_frame: int, frame_stride: int, width: int,
                  height: int, memory_limit_gb: float = 0.0) -> tuple[np.ndarray, float]:
    """The frames of a decoded VIDEO (IMAGE ``[F,H,W,3]``) that ``read_video`` would take from a file, as uint8."""
    _check_size("width", width)
    _check_size("height", height)
    count = images.shape[0]
    picked = list(range(start_frame, count, frame_stride))[: n_frames or None]
    if not picked:
        raise ValueError(f"VE_LoadVideo: start_frame={start_frame} is past the end of 'video' ({count} frames); "
                         f"lower start_frame below {count}.")
    if n_frames and len(picked) < n_frames:
        raise ValueError(f"VE_LoadVideo: 'video' has only {count} frames, but n_frames={n_frames} with "
                         f"start_frame={start_frame} and frame_stride={frame_stride} needs more; lower n_frames to "
                         f"{len(picked)}, or set n_frames to 0 to take all available frames.")
    size = target_size(images.shape[2], images.shape[1], width, height)
    check_decoded_size(len(picked), *size, memory_limit_bytes(memory_limit_gb), "video")
    frames = images_to_uint8(images[picked], "VE_LoadVideo", "video")
    return np.stack([fit_cover(frame, *size, resize=bool(width or height)) for frame in frames]), fps


class LoadVideo(VideoEditNode):
    """Load a video file as an IMAGE batch, picking frames by start/stride and resizing to a multiple of 8."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_LoadVideo",
            display_name="VE Load Video",
            category=CATEGORY,
            **search_aliases(VIDEO_EDIT_ALIASES, ("load video", "video loader")),
            description="Loads frames start_frame, start_frame+frame_stride, ... of a video as an IMAGE batch, "
                        "resized to cover width x height and center-cropped. The first node of every workflow of this pack; "
                        "feeds VAE Encode, VE Compare Before/After and VE Edit Metrics.",
            inputs=[
                io.Combo.Input("file", options=list_input_videos(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder (ignored when 'path' is set)."),
                io.Int.Input("n_frames", default=24, min=0, max=100000,
                             tooltip="Number of frames to load; 0 loads every frame from start_frame on."),
                io.Int.Input("start_frame", default=0, min=0, max=10_000_000,
                             tooltip="Index of the first frame to load."),
                io.Int.Input("frame_stride", default=2, min=1, max=1000,
                             tooltip="Take every n-th frame (Tune-A-Video samples every 2nd)."),
                io.Int.Input("width", default=512, min=0, max=MAX_SIZE, step=8,
                             tooltip="Output width, a multiple of 8; 0 follows the source (aspect kept)."),
                io.Int.Input("height", default=512, min=0, max=MAX_SIZE, step=8,
                             tooltip="Output height, a multiple of 8; 0 follows the source (aspect kept)."),
                io.String.Input("path", default="", optional=True,
                                tooltip="Optional video path inside ComfyUI's input, output or temp folder "
                                        "(absolute, or relative to the input folder); overrides 'file'."),
                io.Float.Input("memory_limit_gb", default=0.0, min=0.0, max=4096.0, step=0.5, optional=True,
                               tooltip="Refuse, before decoding, a request whose frames would take more RAM than "
                                       "this; 0 = 80% of the RAM available now. Never more than the RAM available."),
                io.Video.Input("video", optional=True,
                               tooltip="A VIDEO from core Load Video (or another pack); when connected, frames are "
                                       "picked from it and 'file' / 'path' are ignored."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="Frames [F,H,W,3], RGB in [0,1]."),
                io.Float.Output("fps", display_name="fps", tooltip="Frame rate of the loaded frames: source fps / "
                                                                   "frame_stride."),
                io.Int.Output("frame_count", display_name="frame_count", tooltip="Number of frames loaded."),
            ],
        )

    @classmethod
    def execute(cls, file, n_frames, start_frame, frame_stride, width, height, path="",
                memory_limit_gb=0.0, video=None) -> io.NodeOutput:
        if video is not None:
            components = video.get_components()
            frames, src_fps = select_frames(components.images, float(components.frame_rate), n_frames, start_frame,
                                            frame_stride, width, height, memory_limit_gb)
        else:
            video_path, which = resolve_video_path(file, path)
            frames, src_fps = read_video(video_path, n_frames, start_frame, frame_stride, width, height, which,
                                         memory_limit_gb)
        images = torch.from_numpy(frames).float().div_(255.0)
        fps = src_fps / frame_stride
        shown = f"{images.shape[0]} frames of {images.shape[2]}x{images.shape[1]} at {fps:.4g} fps"
        return io.NodeOutput(images, fps, int(images.shape[0]), ui=ui.PreviewText(shown))

    @classmethod
    def fingerprint_inputs(cls, file=None, path="", video=None, **kwargs):
        if path is None or video is not None:  # linked: the key changes with the upstream output
            return "linked input"
        try:
            video_path, _ = resolve_video_path(file, path)
            stat = os.stat(video_path)
        except (OSError, ValueError):
            return f"missing {file!r} {path!r}"
        return f"{video_path}|{stat.st_mtime_ns}|{stat.st_size}"

    @classmethod
    def validate_inputs(cls, file=None, path="", input_types=None):
        # Taking 'file' here also lets a 'path' override (or a connected 'video') run when the combo value is not
        # (or no longer) listed. 'input_types' holds the linked inputs.
        if "video" in (input_types or {}):
            return True
        if path is None or (not (path and path.strip()) and file is None):
            return True  # linked inputs are only known at run time
        try:
            video_path, which = resolve_video_path(file, path)
        except ValueError as error:
            return str(error)
        return missing_video_message(video_path, which) or True


# ----- saving --------------------------------------------------------------------------------------------------------

def images_to_uint8(images, node: str = "VE_SaveVideo", name: str = "images") -> np.ndarray:
    """IMAGE ``[F,H,W,C]`` floats in [0,1] -> uint8 RGB frames; ValueError for an empty or misshapen batch."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{node}: '{name}' must be an IMAGE tensor, got {type(images).__name__}.")
    if images.ndim != 4:
        raise ValueError(f"{node}: '{name}' must be an IMAGE batch [frames, height, width, channels], got "
                         f"shape {tuple(images.shape)}; connect an IMAGE output.")
    if images.shape[0] == 0:
        raise ValueError(f"{node}: '{name}' is empty (0 frames), nothing to save; check the node feeding it.")
    channels = images.shape[-1]
    if channels not in (1, 3, 4) or images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"{node}: '{name}' has shape {tuple(images.shape)}; expected [frames, height, width, 3] "
                         f"(1 or 4 channels are also accepted) with height and width of at least 2.")
    frames = torch.nan_to_num(images.detach().float().cpu(), 0.0).clamp_(0.0, 1.0).mul_(255.0).round_()
    frames = frames.to(torch.uint8)
    if channels == 1:
        frames = frames.expand(-1, -1, -1, 3)
    return np.ascontiguousarray(frames[..., :3].numpy())


def _check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user cancelled the run (no-op outside ComfyUI)."""
    mm = sys.modules.get("comfy.model_management")  # only when ComfyUI already runs; importing it picks a device
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


# codec, container options, codec options: what browsers play (H.264 / VP9, 4:2:0), at a quality for editing work
AV_SETTINGS = {
    "mp4": ("libx264", {"movflags": "+faststart"}, {"crf": "17", "preset": "medium"}),
    "webm": ("libvpx-vp9", {}, {"crf": "24", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}),
}


def _encode_av(frames: np.ndarray, fps: float, path: str, fmt: str) -> str:
    """Encode with PyAV (FFmpeg) as yuv420p, which needs an even width and height: an odd row/column is cropped."""
    import av

    codec, container_options, codec_options = AV_SETTINGS[fmt]
    h, w = frames.shape[1:3]
    if w % 2 or h % 2:
        log.warning("VE_SaveVideo: %s needs an even size; cropping %dx%d to %dx%d", fmt, w, h, w // 2 * 2, h // 2 * 2)
        w, h = w // 2 * 2, h // 2 * 2
    # The file is opened here, not by FFmpeg, so that it is closed on every failure (a full disk made FFmpeg's own
    # close fail and keep the descriptor open).
    try:
        with open(path, "w+b") as file, av.open(file, mode="w", format=fmt, options=container_options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=codec_options)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for frame in frames:
                _check_interrupt()
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), "rgb24")))
            container.mux(stream.encode())
    except av.error.PyAVCallbackError as error:  # the file's own error (disk full), raised inside FFmpeg
        raise (error.__context__ if isinstance(error.__context__, OSError) else OSError(str(error))) from None
    return codec


def _to_pil_images(frames: np.ndarray) -> list[Image.Image]:
    result = []
    for frame in frames:
        _check_interrupt()
        result.append(Image.fromarray(frame, "RGB"))
    return result


def _encode_gif(frames: np.ndarray, fps: float, path: str) -> str:
    images = _to_pil_images(frames)
    duration = max(20, round(100.0 / fps) * 10)  # GIF stores centiseconds; < 20 ms is slowed down by viewers
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return "gif"


def _encode_webp(frames: np.ndarray, fps: float, path: str) -> str:
    images = _to_pil_images(frames)
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=max(1, round(1000.0 / fps)),
                   loop=0, lossless=False, quality=90, method=4)
    return "webp"


ENCODERS = {"mp4": lambda *args: _encode_av(*args, "mp4"), "webm": lambda *args: _encode_av(*args, "webm"),
            "gif": _encode_gif, "webp": _encode_webp}


def write_video(frames: np.ndarray, fps: float, fmt: str, target: str) -> str:
    """Write uint8 RGB frames to ``target`` atomically (files.save_atomically: never replacing a file).

    Returns the codec used. On any failure or interruption nothing is left and ``target`` is untouched.
    """
    if fmt not in ENCODERS:
        raise ValueError(f"VE_SaveVideo: format must be one of {', '.join(SAVE_FORMATS)}, got {fmt!r}.")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"VE_SaveVideo: fps must be a positive number, got {fps!r}.")
    (codec,) = save_atomically([(os.path.abspath(target), lambda tmp: ENCODERS[fmt](frames, fps, tmp))],
                               "VE_SaveVideo", "filename_prefix")
    return codec


def save_target(filename_prefix: str, fmt: str, width: int, height: int) -> tuple[str, str, str]:
    """(path, file name, subfolder) of the next numbered ``<prefix>_NNNNN_.<fmt>`` in the output folder; the
    prefix's names are checked (valid on every system, inside the output folder) before anything is created."""
    parts = filename_prefix.replace(os.sep, "/").split("/")
    if not parts[-1].strip():
        raise ValueError("VE_SaveVideo: filename_prefix has no file name (it is empty or ends with '/'); give one, "
                         "e.g. video_edit/edit.")
    for part in parts:
        if part not in ("", ".", ".."):  # the output folder's confinement refuses what climbs out
            check_name(part, "filename_prefix", "VE_SaveVideo")
    folder, filename, _, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), width, height)
    (target,) = numbered_paths(filename, [(folder, f".{fmt}")])
    return target, os.path.basename(target), subfolder


class SaveVideo(VideoEditNode):
    """Save an IMAGE batch as an mp4, webm, gif or webp video in ComfyUI's output folder."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_SaveVideo",
            display_name="VE Save Video",
            category=CATEGORY,
            **search_aliases(VIDEO_EDIT_ALIASES, ("save video", "export video")),
            description="Saves frames as one video in the output folder and previews it in the node: mp4 (H.264) "
                        "or webm (VP9), both yuv420p so browsers play them, or an animated gif / webp.",
            inputs=[
                io.Image.Input("images", tooltip="Frames to save, [F,H,W,3]."),
                io.Float.Input("fps", default=8.0, min=0.01, max=1000.0, step=0.01, tooltip="Playback frame rate."),
                io.String.Input("filename_prefix", default="video_edit/edit",
                                tooltip="File name prefix, may include a subfolder of the output folder."),
                io.Combo.Input("format", options=list(SAVE_FORMATS), default="mp4", tooltip="Container / codec."),
            ],
            outputs=[io.String.Output("path", display_name="path", tooltip="Absolute path of the saved file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, fps, filename_prefix, format) -> io.NodeOutput:
        frames = images_to_uint8(images)
        height, width = frames.shape[1:3]
        target, file, subfolder = save_target(filename_prefix, format, width, height)
        codec = write_video(frames, float(fps), format, target)
        log.info("VE_SaveVideo: saved %s (%d frames, %dx%d, %.3g fps, %s)", target, len(frames), width, height, fps,
                 codec)
        result = ui.SavedResult(file, subfolder, io.FolderType.output)
        animated_image = format in ("gif", "webp")
        preview = ui.SavedImages([result], is_animated=True) if animated_image else ui.PreviewVideo([result])
        return io.NodeOutput(target, ui={**preview.as_dict(), "text": [target]})


NODES = [LoadVideo, SaveVideo]
