"""VE_LoadVideo / VE_SaveVideo: graphs on a real ComfyUI server, and the atomic save in-process.

The source is a synthetic 20-frame 96x80 clip at 10 fps whose frames all differ (background colour and a moving
square), so "which frame is this" can be answered by the nearest source frame.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageSequence

from comfy_server import ExecutionError

W, H, N_FRAMES, SRC_FPS = 96, 80, 20, 10.0
CLIP = "ve_clip.mp4"
LOSSLESS_TOL = 0.5   # mean |diff| of frames that went through float [0,1] and back (no codec)
CODEC_TOL = 6.0      # mean |diff| after a lossy re-encode (H.264 / VP9 / gif palette / lossy webp)


# ----- helpers --------------------------------------------------------------------------------------------------------

def synth_frame(i: int) -> np.ndarray:
    """Frame i of the source clip, BGR: a background colour that drifts with i and a square moving right."""
    frame = np.empty((H, W, 3), np.uint8)
    frame[:] = (200 - 9 * i, 60 + 4 * i, 20 + 11 * i)
    frame[:, : W // 2] //= 2  # a vertical edge, so the frames are not flat
    x = 3 + 4 * i
    frame[24:48, x:x + 20] = (255, 255, 255) if i % 2 else (0, 0, 255)
    return frame


def write_clip(path: Path, n: int = N_FRAMES, fps: float = SRC_FPS, transform=lambda f: f) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(transform(synth_frame(i)))
    writer.release()


def read_cv2(path) -> tuple[list[np.ndarray], float]:
    """All frames (RGB) and the fps of a video file, decoded with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames, fps


def read_pil(path) -> tuple[list[np.ndarray], list[int], int | None]:
    """Frames (RGB), per-frame durations (ms) and the loop count of an animated gif / webp."""
    frames, durations = [], []
    with Image.open(path) as im:
        loop = im.info.get("loop")
        for frame in ImageSequence.Iterator(im):
            frame.load()
            durations.append(frame.info.get("duration"))
            frames.append(np.asarray(frame.convert("RGB")))
    return frames, durations, loop


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def assert_frames_match(frames, reference, indices, tol):
    """Each frame is within ``tol`` of reference[indices[k]] and nearer to it than to any other source frame."""
    assert len(frames) == len(indices)
    for k, (frame, want) in enumerate(zip(frames, indices)):
        diffs = [mad(frame, ref) for ref in reference]
        assert int(np.argmin(diffs)) == want, f"frame {k}: nearest source frame {np.argmin(diffs)}, expected {want}"
        assert diffs[want] < tol, f"frame {k}: mean diff {diffs[want]:.2f} to source frame {want} >= {tol}"


def fit_cover_reference(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Independent cover-resize + center-crop, to check the loader's resize."""
    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    x0, y0 = (nw - width) // 2, (nh - height) // 2
    return resized[y0:y0 + height, x0:x0 + width]


def unique_prefix(tag: str) -> str:
    return f"ve_test/{tag}_{uuid.uuid4().hex[:6]}"


def files_with_prefix(comfy, prefix: str) -> list[str]:
    """Every entry (hidden ones included) in the prefix's output subfolder that belongs to it or is a temp file."""
    folder = comfy.output_dir / os.path.dirname(prefix)
    stem = os.path.basename(prefix)
    return sorted(n for n in os.listdir(folder) if n.startswith(stem) or n.startswith("." + stem) or ".tmp" in n
                  or n.endswith(".partial"))


# ----- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def GraphBuilder(comfy_lib):
    from comfy_execution.graph_utils import GraphBuilder

    return lambda: GraphBuilder(prefix="")


@pytest.fixture(scope="module")
def source(comfy):
    """The clip in ComfyUI's input folder, and its frames as OpenCV decodes them (RGB)."""
    comfy.input_dir.mkdir(parents=True, exist_ok=True)
    write_clip(comfy.input_dir / CLIP)
    frames, fps = read_cv2(comfy.input_dir / CLIP)
    assert len(frames) == N_FRAMES and fps == pytest.approx(SRC_FPS)
    return frames


def load(g, file=CLIP, n_frames=0, start_frame=0, frame_stride=1, width=0, height=0, **extra):
    return g.node("VE_LoadVideo", file=file, n_frames=n_frames, start_frame=start_frame, frame_stride=frame_stride,
                  width=width, height=height, **extra)


def saved_files(comfy, outputs, node) -> list[Path]:
    return comfy.output_files({node.id: outputs[node.id]})


def saved_pngs(comfy, outputs, node) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in saved_files(comfy, outputs, node)]


# ----- through the server ---------------------------------------------------------------------------------------------

def stream_info(path) -> tuple[str, str]:
    """(codec, pixel format) of the first video stream, as FFmpeg (PyAV) reads the file."""
    import av

    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.name, context.pix_fmt


@pytest.mark.parametrize("fmt,codec", [("mp4", "h264"), ("webm", "vp9")])
def test_load_then_save_keeps_frames_size_fps_in_a_browser_codec(comfy, source, GraphBuilder, fmt, codec):
    g = GraphBuilder()
    loader = load(g)
    prefix = unique_prefix(fmt)
    save = g.node("VE_SaveVideo", images=loader.out(0), fps=loader.out(1), filename_prefix=prefix, format=fmt)
    path_text = g.node("PreviewAny", source=save.out(0))
    count_text = g.node("PreviewAny", source=loader.out(2))
    fps_text = g.node("PreviewAny", source=loader.out(1))
    outputs = comfy.run(g.finalize())

    files = saved_files(comfy, outputs, save)
    assert len(files) == 1 and files[0].suffix == f".{fmt}"
    assert stream_info(files[0]) == (codec, "yuv420p")
    assert outputs[save.id]["animated"] == [True]
    assert files_with_prefix(comfy, prefix) == [files[0].name], "exactly one file, no temp leftovers"
    assert Path(outputs[path_text.id]["text"][0]) == files[0]
    assert outputs[count_text.id]["text"][0] == str(N_FRAMES)
    assert float(outputs[fps_text.id]["text"][0]) == pytest.approx(SRC_FPS)

    frames, fps = read_cv2(files[0])
    assert len(frames) == N_FRAMES
    assert frames[0].shape == (H, W, 3)
    assert fps == pytest.approx(SRC_FPS, abs=0.01)
    assert_frames_match(frames, source, list(range(N_FRAMES)), CODEC_TOL)


def test_start_stride_n_frames_pick_the_right_frames(comfy, source, GraphBuilder):
    g = GraphBuilder()
    loader = load(g, n_frames=4, start_frame=3, frame_stride=3)
    pngs = g.node("SaveImage", images=loader.out(0), filename_prefix=unique_prefix("pick"))
    save = g.node("VE_SaveVideo", images=loader.out(0), fps=loader.out(1), filename_prefix=unique_prefix("pick"),
                  format="mp4")
    outputs = comfy.run(g.finalize())

    expected = [3, 6, 9, 12]
    assert_frames_match(saved_pngs(comfy, outputs, pngs), source, expected, LOSSLESS_TOL)
    frames, fps = read_cv2(saved_files(comfy, outputs, save)[0])
    assert fps == pytest.approx(SRC_FPS / 3, abs=0.01)
    assert_frames_match(frames, source, expected, CODEC_TOL)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_save_gif_and_webp(comfy, source, GraphBuilder, fmt):
    g = GraphBuilder()
    loader = load(g, n_frames=0, frame_stride=2)  # 10 frames at 5 fps -> 200 ms each
    prefix = unique_prefix(fmt)
    save = g.node("VE_SaveVideo", images=loader.out(0), fps=loader.out(1), filename_prefix=prefix, format=fmt)
    outputs = comfy.run(g.finalize())

    files = saved_files(comfy, outputs, save)
    assert len(files) == 1 and files[0].suffix == f".{fmt}"
    assert outputs[save.id]["animated"] == [True]
    assert files_with_prefix(comfy, prefix) == [files[0].name]
    frames, durations, loop = read_pil(files[0])
    assert len(frames) == N_FRAMES // 2
    assert frames[0].shape == (H, W, 3)
    assert durations == [200] * (N_FRAMES // 2)
    assert loop == 0  # loop forever
    assert_frames_match(frames, source, list(range(0, N_FRAMES, 2)), CODEC_TOL)

    # ...and VE_LoadVideo reads the animation back (Pillow fallback where FFmpeg can't decode animated webp)
    g = GraphBuilder()
    loader = load(g, file=CLIP, n_frames=0, path=str(files[0]))
    pngs = g.node("SaveImage", images=loader.out(0), filename_prefix=unique_prefix(f"re{fmt}"))
    fps_text = g.node("PreviewAny", source=loader.out(1))
    outputs = comfy.run(g.finalize())
    assert float(outputs[fps_text.id]["text"][0]) == pytest.approx(5.0)
    assert_frames_match(saved_pngs(comfy, outputs, pngs), source, list(range(0, N_FRAMES, 2)), CODEC_TOL)


def test_resize_covers_and_center_crops(comfy, source, GraphBuilder):
    g = GraphBuilder()
    square = g.node("SaveImage", images=load(g, n_frames=2, width=64, height=64).out(0),
                    filename_prefix=unique_prefix("square"))
    by_width = g.node("SaveImage", images=load(g, n_frames=2, width=48, height=0).out(0),
                      filename_prefix=unique_prefix("bywidth"))
    outputs = comfy.run(g.finalize())

    for frame, ref in zip(saved_pngs(comfy, outputs, square), source[:2]):
        assert frame.shape == (64, 64, 3)
        assert mad(frame, fit_cover_reference(ref, 64, 64)) < LOSSLESS_TOL
    for frame, ref in zip(saved_pngs(comfy, outputs, by_width), source[:2]):
        assert frame.shape == (40, 48, 3)  # 96x80 at width 48 keeps the aspect: 48x40
        assert mad(frame, fit_cover_reference(ref, 48, 40)) < LOSSLESS_TOL


def test_round_trip_through_core_video_nodes(comfy, source, GraphBuilder):
    g = GraphBuilder()
    loader = load(g, n_frames=8, frame_stride=2)
    video = g.node("CreateVideo", images=loader.out(0), fps=loader.out(1))
    parts = g.node("GetVideoComponents", video=video.out(0))  # outputs 0 = images, 2 = fps (0.3.75 and newer)
    prefix = unique_prefix("core")
    save = g.node("VE_SaveVideo", images=parts.out(0), fps=parts.out(2), filename_prefix=prefix, format="mp4")
    outputs = comfy.run(g.finalize())

    files = saved_files(comfy, outputs, save)
    assert files_with_prefix(comfy, prefix) == [files[0].name]
    frames, fps = read_cv2(files[0])
    assert len(frames) == 8
    assert frames[0].shape == (H, W, 3)
    assert fps == pytest.approx(SRC_FPS / 2, abs=0.01)
    assert_frames_match(frames, source, list(range(0, 16, 2)), CODEC_TOL)


def test_core_video_input_picks_the_same_frames(comfy, source, GraphBuilder):
    g = GraphBuilder()
    core = g.node("LoadVideo", file=CLIP)
    loader = load(g, file="not_in_the_list.mp4", n_frames=4, start_frame=3, frame_stride=3, video=core.out(0))
    pngs = g.node("SaveImage", images=loader.out(0), filename_prefix=unique_prefix("video_in"))
    fps_text = g.node("PreviewAny", source=loader.out(1))
    outputs = comfy.run(g.finalize())

    # core decodes with PyAV, VE_LoadVideo's file path with OpenCV: the same frames, decoded a little differently
    assert_frames_match(saved_pngs(comfy, outputs, pngs), source, [3, 6, 9, 12], CODEC_TOL)
    assert float(outputs[fps_text.id]["text"][0]) == pytest.approx(SRC_FPS / 3)
    g = GraphBuilder()
    core = g.node("LoadVideo", file=CLIP)
    g.node("PreviewImage", images=load(g, n_frames=30, video=core.out(0)).out(0))
    with pytest.raises(ExecutionError, match=r"'video' has only 20 frames.*lower n_frames to 20"):
        comfy.run(g.finalize())


def test_before_after_stacks_frame_by_frame(comfy, source, GraphBuilder):
    g = GraphBuilder()
    before = load(g, n_frames=3, width=64, height=48)
    after = g.node("ImageInvert", image=load(g, n_frames=3, width=32, height=24).out(0))
    side = g.node("VE_CompareVideos", before=before.out(0), after=after.out(0), layout="side_by_side", gap=8)
    top = g.node("VE_CompareVideos", before=before.out(0), after=after.out(0), layout="top_bottom", gap=0)
    pngs = {name: g.node("SaveImage", images=node.out(0), filename_prefix=unique_prefix(name))
            for name, node in (("side", side), ("top", top), ("before", before))}
    outputs = comfy.run(g.finalize())

    side_frames, top_frames, before_frames = (saved_pngs(comfy, outputs, pngs[n]) for n in ("side", "top", "before"))
    assert len(side_frames) == len(top_frames) == 3
    assert side_frames[0].shape == (48, 64 + 8 + 64, 3) and top_frames[0].shape == (96, 64, 3)
    for side_frame, top_frame, frame in zip(side_frames, top_frames, before_frames):
        assert np.array_equal(side_frame[:, :64], frame) and np.array_equal(top_frame[:48], frame)
        assert (side_frame[:, 64:72] == 255).all()
        assert mad(side_frame[:, 72:], 255 - frame) < 40  # the inverted half-size copy, scaled back up
    g = GraphBuilder()
    unequal = g.node("VE_CompareVideos", before=load(g, n_frames=3).out(0), after=load(g, n_frames=2).out(0),
                     layout="side_by_side", gap=0)
    g.node("PreviewImage", images=unequal.out(0))
    with pytest.raises(ExecutionError, match="after: 2 frames against 3 in 'before'"):
        comfy.run(g.finalize())


def test_path_input_overrides_file(comfy, source, GraphBuilder):
    other = comfy.output_dir / "ve_path_input" / "elsewhere.mp4"  # an absolute path inside the output folder
    other.parent.mkdir(parents=True, exist_ok=True)
    write_clip(other, n=6, transform=lambda f: 255 - f)  # different content, so the override is visible
    g = GraphBuilder()
    loader = load(g, file="not_in_the_list.mp4", n_frames=0, path=str(other))  # 'file' is ignored, even if stale
    pngs = g.node("SaveImage", images=loader.out(0), filename_prefix=unique_prefix("path"))
    outputs = comfy.run(g.finalize())

    frames = saved_pngs(comfy, outputs, pngs)
    expected, _ = read_cv2(other)
    assert len(frames) == 6
    for frame, ref in zip(frames, expected):
        assert mad(frame, ref) < LOSSLESS_TOL


def test_edited_file_is_reloaded(comfy, source, GraphBuilder):
    name = f"ve_edit_{uuid.uuid4().hex[:6]}.mp4"
    write_clip(comfy.input_dir / name, n=4)
    g = GraphBuilder()
    pngs = g.node("SaveImage", images=load(g, file=name, n_frames=1).out(0), filename_prefix=unique_prefix("edit"))
    prompt = g.finalize()

    first = saved_pngs(comfy, comfy.run(prompt), pngs)[0]
    write_clip(comfy.input_dir / name, n=4, transform=lambda f: 255 - f)
    stat = os.stat(comfy.input_dir / name)
    os.utime(comfy.input_dir / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = saved_pngs(comfy, comfy.run(prompt), pngs)[0]

    edited, _ = read_cv2(comfy.input_dir / name)
    assert mad(first, source[0]) < LOSSLESS_TOL
    assert mad(second, edited[0]) < LOSSLESS_TOL, "the edited file was not reloaded"


@pytest.mark.parametrize("case", ["missing_file", "missing_path", "unreadable", "too_few_frames", "start_past_end",
                                  "width_not_multiple_of_8"])
def test_load_rejects_bad_inputs(comfy, source, GraphBuilder, case):
    (comfy.input_dir / "x.mp4").write_text("this is not a video\n")
    settings, expected = {
        "missing_file": (dict(file="ve_no_such_clip.mp4"), ["'file'", "not found", "ve_no_such_clip.mp4"]),
        "missing_path": (dict(path="sub/none.mp4"), ["'path'", "not found", "none.mp4"]),
        "unreadable": (dict(file="x.mp4"), ["'file'", "x.mp4", "could not be opened as a video"]),
        "too_few_frames": (dict(n_frames=24, frame_stride=2),
                           ["n_frames=24", f"only {N_FRAMES} frames", "lower n_frames to 10"]),
        "start_past_end": (dict(n_frames=0, start_frame=30), ["start_frame=30", "lower start_frame below 20"]),
        "width_not_multiple_of_8": (dict(width=100, height=64), ["width=100", "multiple of 8", "96 or 104"]),
    }[case]
    g = GraphBuilder()
    g.node("SaveImage", images=load(g, **settings).out(0), filename_prefix=unique_prefix("bad"))
    with pytest.raises(ExecutionError) as error:
        comfy.run(g.finalize())
    message = error.value.exception_message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


# ----- in-process -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_io(comfy_lib):
    from video_edit.nodes import video_io

    return video_io


def test_zero_size_keeps_source_pixels_cropped_to_multiples_of_8(video_io, tmp_path):
    path = tmp_path / "odd.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (100, 74))
    for i in range(3):
        writer.write(cv2.resize(synth_frame(i), (100, 74)))
    writer.release()
    decoded, _ = read_cv2(path)

    frames, fps = video_io.read_video(str(path), n_frames=0, frame_stride=1, width=0, height=0)
    assert frames.shape == (3, 72, 96, 3) and fps == pytest.approx(10.0)
    for frame, ref in zip(frames, decoded):
        assert np.array_equal(frame, ref[1:73, 2:98]), "width = height = 0 must crop, not resample"
    frames, _ = video_io.read_video(str(path), n_frames=2, frame_stride=1, width=0, height=40)
    assert frames.shape == (2, 40, 48, 3)  # 100x74 at height 40 -> width 54, floored to 48


# ----- in-process: atomic save -----------------------------------------------------------------------------------------

@pytest.fixture
def frames_u8():
    return np.stack([cv2.cvtColor(synth_frame(i), cv2.COLOR_BGR2RGB) for i in range(6)])


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "webp"])
def test_successful_save_leaves_exactly_one_file(video_io, frames_u8, tmp_path, fmt):
    target = tmp_path / f"clip_00001_.{fmt}"
    video_io.write_video(frames_u8, 6.0, fmt, str(target))
    assert os.listdir(tmp_path) == [target.name]
    assert target.stat().st_size > 0


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "webp"])
def test_interrupted_save_leaves_nothing(video_io, frames_u8, tmp_path, monkeypatch, fmt):
    previous = tmp_path / f"clip_00001_.{fmt}"
    previous.write_bytes(b"previous")  # an existing file must survive a failed save untouched
    target = tmp_path / f"clip_00002_.{fmt}"
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt_midway():
        calls.append(1)
        if len(calls) == 4:
            raise Interrupted("user cancelled")

    monkeypatch.setattr(video_io, "_check_interrupt", interrupt_midway)
    with pytest.raises(Interrupted):
        video_io.write_video(frames_u8, 6.0, fmt, str(target))
    assert len(calls) == 4  # stopped mid-way, after three frames were encoded
    assert os.listdir(tmp_path) == [previous.name]
    assert previous.read_bytes() == b"previous"


def test_failing_encoder_leaves_nothing(video_io, frames_u8, tmp_path, monkeypatch):
    def broken(frames, fps, path):
        Path(path).write_bytes(b"half a video")
        raise OSError("disk full")

    monkeypatch.setitem(video_io.ENCODERS, "webp", broken)
    with pytest.raises(OSError, match="disk full"):
        video_io.write_video(frames_u8, 6.0, "webp", str(tmp_path / "a.webp"))
    monkeypatch.setitem(video_io.ENCODERS, "gif", lambda frames, fps, path: "gif")  # writes nothing at all
    with pytest.raises(RuntimeError, match="wrote nothing"):
        video_io.write_video(frames_u8, 6.0, "gif", str(tmp_path / "a.gif"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "webp"])
def test_save_to_a_bad_path_fails_cleanly(video_io, frames_u8, tmp_path, fmt):
    (tmp_path / "a_file").write_text("in the way of the folder")
    with pytest.raises(PermissionError, match=r"cannot write into the folder .*a_file.*Make it a writable folder"):
        video_io.write_video(frames_u8, 6.0, fmt, str(tmp_path / "a_file" / f"a.{fmt}"))
    assert os.listdir(tmp_path) == ["a_file"]


def test_save_rejects_bad_images(video_io):
    import torch

    with pytest.raises(ValueError, match="'images' is empty"):
        video_io.images_to_uint8(torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match=r"'images' must be an IMAGE batch .*got shape \(8, 8, 3\)"):
        video_io.images_to_uint8(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match=r"'images' has shape \(2, 8, 8, 5\)"):
        video_io.images_to_uint8(torch.zeros(2, 8, 8, 5))
    out = video_io.images_to_uint8(torch.full((2, 8, 8, 4), 0.5))
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.uint8 and (out == 128).all()
    with pytest.raises(ValueError, match="fps"):
        video_io.write_video(out, 0.0, "gif", "unused.gif")
