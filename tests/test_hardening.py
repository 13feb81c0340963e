"""Hostile and careless inputs through the real executor: files outside ComfyUI's folders, saves that must not
overwrite or leave half a pair, and broken model files that must be named with the fix."""

from __future__ import annotations

import contextlib
import ntpath
import os
import shutil
import signal
import sys
import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_server import ExecutionError
from sample_clip import write_sample_clip

OUTSIDE_MESSAGE = "does not name a file inside ComfyUI's input, output or temp folder"


@pytest.fixture(scope="module")
def graph(comfy_lib):
    from comfy_execution.graph_utils import GraphBuilder

    return lambda: GraphBuilder(prefix="")


def refusal(comfy, prompt) -> str:
    with pytest.raises(ExecutionError) as error:
        comfy.run(prompt)
    return error.value.exception_message


def load_video(g, **inputs):
    settings = dict(file="skier.mp4", n_frames=2, start_frame=0, frame_stride=1, width=64, height=64, path="")
    settings.update(inputs)
    video = g.node("VE_LoadVideo", **settings)
    return g.node("PreviewImage", images=video.out(0))


# ----- reads confined to ComfyUI's folders ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outside(comfy, demo_settings):
    """A real video outside ComfyUI's folders, and a symlink to it from the input folder."""
    folder = comfy.base_dir.parent / f"outside_{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    secret = folder / "secret.mp4"
    shutil.copyfile(comfy.input_dir / "skier.mp4", secret)
    link = comfy.input_dir / f"link_{uuid.uuid4().hex[:6]}.mp4"
    link.symlink_to(secret)
    return secret, link


def test_load_video_reads_nothing_outside_comfy_folders(comfy, graph, outside):
    secret, link = outside
    relative = os.path.relpath(secret, comfy.input_dir)  # ../../outside_xxx/secret.mp4
    messages = {}
    for case, inputs in {
        "absolute path": dict(path=str(secret)),
        "absolute path, missing file": dict(path=str(secret.with_name("missing.mp4"))),
        "system file": dict(path="/etc/passwd"),
        "dot-dot path": dict(path=relative),
        "symlink out of the input folder": dict(path=link.name),
        "dot-dot file": dict(file=relative),
        "absolute file": dict(file=str(secret)),
        "symlinked file": dict(file=link.name),
    }.items():
        g = graph()
        load_video(g, **inputs)
        message = refusal(comfy, g.finalize())
        assert "secret" not in message.replace(str(secret), "").replace(relative, ""), (case, message)
        if "file" in inputs and OUTSIDE_MESSAGE not in message:  # newer ComfyUI refuses such a combo value itself
            assert any(m in message for m in ("not in list", "value_not_in_list", "Invalid file path")), (case, message)
            continue
        assert OUTSIDE_MESSAGE in message, (case, message)
        messages[case] = message.replace(inputs.get("path", inputs.get("file", "")), "<given>")
    # Whether the outside file exists is not revealed.
    assert messages["absolute path"] == messages["absolute path, missing file"]


def test_load_video_still_reads_the_output_folder_by_absolute_path(comfy, graph):
    target = comfy.output_dir / "ve_hardening" / "copy.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(comfy.input_dir / "skier.mp4", target)
    g = graph()
    preview = load_video(g, path=str(target))
    outputs = comfy.run(g.finalize())
    assert len(outputs[preview.id]["images"]) == 2


def test_save_prefixes_cannot_escape_their_folders(comfy, graph, produced):
    g = graph()
    video = g.node("VE_LoadVideo", file="skier.mp4", n_frames=2, start_frame=0, frame_stride=1, width=64, height=64,
                   path="")
    g.node("VE_SaveVideo", images=video.out(0), fps=8.0, filename_prefix="../../ve_escape/x", format="gif")
    message = refusal(comfy, g.finalize())
    assert "outside the output folder" in message.lower() or "not allowed" in message.lower(), message
    assert not (comfy.base_dir.parent / "ve_escape").exists()
    # The model saves keep only the file name of what they are given.
    assert {p.name for p in produced["tuned"]} == {"ve_escape_00001_.safetensors", "ve_escape_00002_.safetensors"}
    assert all(p.parent == comfy.models_dir("video_edit_tuned") for p in produced["tuned"])


def test_memory_estimate_refuses_before_decoding(comfy, graph):
    g = graph()
    load_video(g, n_frames=100000, frame_stride=1, width=8192, height=8192, memory_limit_gb=4.0)
    message = refusal(comfy, g.finalize())
    assert "20 frames of 8192x8192" in message and "18.8 GiB" in message and "raise memory_limit_gb" in message, message
    g = graph()
    load_video(g, n_frames=20, width=512, height=512, memory_limit_gb=0.01)  # 20 x 512^2 x 15 B = 75 MiB
    message = refusal(comfy, g.finalize())
    assert "20 frames of 512x512" in message and "limit of 0.0 GiB" in message, message


# ----- saves: numbered, all or nothing ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def produced(comfy, graph, demo_settings):
    """Through the executor: a one-step tuning saved twice under one name, a one-step motion LoRA pair."""
    g = graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
    video = g.node("VE_LoadVideo", file="skier.mp4", n_frames=2, start_frame=0, frame_stride=1, width=64, height=64,
                   path="")
    latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
    text = g.node("CLIPTextEncode", clip=ckpt.out(1), text="a skier")
    inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=False)
    tune = g.node("VE_OneShotTune", model=inflated.out(0), latent=latent.out(0), conditioning=text.out(0), steps=1,
                  learning_rate=1e-3, seed=0, gradient_checkpointing=False)
    for prompt in ("a skier", "a skier, saved again"):  # one name twice: the first file must survive the second
        g.node("VE_SaveTuned", model=tune.out(0), filename="../../ve_escape", prompt=prompt)
    clips = g.node("VE_MotionClipSet", latent=latent.out(0), conditioning=text.out(0))
    train = g.node("VE_TrainMotionDirector", model=inflated.out(0), clip_set=clips.out(0), steps=1, rank=2,
                   learning_rate=1e-3, weight_decay=0.0, seed=0, gradient_checkpointing=False,
                   spatial_mask_probability=0.0, lora_dropout=0.0, checkpoint_every=0, checkpoint_name="")
    g.node("VE_SaveMotionLoRA", spatial_lora=train.out(0), temporal_lora=train.out(1), filename="ve_pair")
    comfy.run(g.finalize())
    tuned = sorted(comfy.models_dir("video_edit_tuned").glob("ve_escape_*"))
    pair = [comfy.models_dir("loras") / "ve_pair_00001_spatial.safetensors",
            comfy.models_dir("video_edit_motion_lora") / "ve_pair_00001_temporal.safetensors"]
    assert all(p.is_file() for p in pair)
    return {"tuned": tuned, "pair": pair, "graph": g}


def test_save_tuned_numbers_instead_of_overwriting(produced):
    first, second = produced["tuned"]
    assert first.name == "ve_escape_00001_.safetensors" and second.name == "ve_escape_00002_.safetensors"
    assert first.stat().st_size > 0 and second.stat().st_size > 0


def test_motion_lora_pair_is_saved_both_or_neither(comfy, graph, produced):
    temporal_folder = comfy.models_dir("video_edit_motion_lora")
    spatial_folder = comfy.models_dir("loras")
    spatial_before = sorted(os.listdir(spatial_folder))
    moved = temporal_folder.with_name("video_edit_motion_lora.moved")
    temporal_folder.rename(moved)
    temporal_folder.write_text("a file where the temporal folder should be: it cannot be written into")
    try:
        g = graph()
        ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
        video = g.node("VE_LoadVideo", file="skier.mp4", n_frames=2, start_frame=0, frame_stride=1, width=64,
                       height=64, path="")
        latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
        text = g.node("CLIPTextEncode", clip=ckpt.out(1), text="a skier on a slope")
        inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=False)
        clips = g.node("VE_MotionClipSet", latent=latent.out(0), conditioning=text.out(0))
        train = g.node("VE_TrainMotionDirector", model=inflated.out(0), clip_set=clips.out(0), steps=1, rank=2,
                       learning_rate=1e-3, weight_decay=0.0, seed=1, gradient_checkpointing=False,
                       spatial_mask_probability=0.0, lora_dropout=0.0, checkpoint_every=0, checkpoint_name="")
        g.node("VE_SaveMotionLoRA", spatial_lora=train.out(0), temporal_lora=train.out(1), filename="ve_half")
        message = refusal(comfy, g.finalize())
    finally:
        temporal_folder.unlink()
        moved.rename(temporal_folder)
    assert "cannot write into the folder" in message and "video_edit_motion_lora" in message, message
    assert sorted(os.listdir(spatial_folder)) == spatial_before  # no spatial file, no temporary file


# ----- broken model files are named, with the fix ----------------------------------------------------------------------

def broken_variants(path) -> dict[str, object]:
    """name -> bytes, or tensors to save, of broken copies of a good safetensors file."""
    good = load_file(path)
    raw = path.read_bytes()
    key = sorted(k for k in good if good[k].ndim == 2)[0]
    nan = dict(good)
    nan[key] = good[key].clone()
    nan[key][0, 0] = float("nan")
    return {"truncated": raw[: len(raw) // 2], "garbage": b"\xff" * 64, "nan": nan}


def write_variant(folder, stem, variant, metadata=None):
    path = folder / f"{stem}_{uuid.uuid4().hex[:6]}.safetensors"
    if isinstance(variant, bytes):
        path.write_bytes(variant)
    else:
        save_file(variant, str(path), metadata=metadata)
    return path.name


def load_tuned_graph(comfy, g, name):
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
    loaded = g.node("VE_LoadTuned", model=ckpt.out(0), tuned_file=name)
    g.node("PreviewAny", source=loaded.out(0))


def test_broken_tuned_files_are_named(comfy, graph, produced):
    from safetensors import safe_open

    good = produced["tuned"][0]
    with safe_open(str(good), framework="pt") as f:
        metadata = f.metadata()
    folder = good.parent
    tensors = load_file(good)
    temporal = sorted(k for k in tensors if k.startswith("temporal.") and k.endswith("to_q.weight"))[0]
    wrong_shape = dict(tensors)
    wrong_shape[temporal] = torch.zeros(3, 5)
    missing = {k: v for k, v in tensors.items() if k != temporal}
    cases = {name: (variant, ["tuned_file", expected])
             for (name, variant), expected in zip(broken_variants(good).items(),
                                                  ["truncated or corrupt", "truncated or corrupt", "NaN or Inf"])}
    cases["wrong_shape"] = (wrong_shape, ["tuned_file", temporal[len("temporal."):], "(3, 5)", "the model expects"])
    cases["missing"] = (missing, ["tuned_file", temporal[len("temporal."):], "is missing"])
    for case, (variant, expected) in cases.items():
        name = write_variant(folder, case, variant, metadata)
        g = graph()
        load_tuned_graph(comfy, g, name)
        message = refusal(comfy, g.finalize())
        for part in expected + [name]:
            assert part in message, (case, part, message)
        assert "Traceback" not in message and len(message.splitlines()) <= 2, message


def test_broken_motion_lora_files_are_named(comfy, graph, produced):
    for path, input_name, folder in zip(produced["pair"], ("spatial_file", "temporal_file"),
                                        ("loras", "video_edit_motion_lora")):
        for case, variant in broken_variants(path).items():
            name = write_variant(path.parent, case, variant)
            g = graph()
            ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
            inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=False)
            files = {"spatial_file": "none", "temporal_file": "none", input_name: name}
            loaded = g.node("VE_LoadMotionLoRA", model=inflated.out(0), spatial_strength=1.0, temporal_strength=1.0,
                            **files)
            g.node("PreviewAny", source=loaded.out(0))
            message = refusal(comfy, g.finalize())
            expected = "NaN or Inf" if case == "nan" else "truncated or corrupt"
            for part in (input_name, name, expected):
                assert part in message, (folder, case, part, message)


# ----- in-process: saves that fail, names, limits, Windows rules ----------------------------------------------------

@pytest.fixture(scope="module")
def files(comfy_lib):
    from video_edit.nodes.shared import files

    return files


@pytest.fixture(scope="module")
def video_io(comfy_lib):
    from video_edit.nodes import video_io

    return video_io


@pytest.fixture
def noisy_frames():
    """Frames that do not compress, so an encoder writes well past a small file-size limit."""
    return np.random.default_rng(0).integers(0, 255, (12, 128, 128, 3), dtype=np.uint8)


@contextlib.contextmanager
def disk_full_at(size: int):
    """Writes past ``size`` bytes fail (EFBIG, as a full disk fails them with ENOSPC) in this process."""
    import resource
    import signal

    previous_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_signal)


def open_files_in(folder) -> list[str]:
    """What this process holds open in ``folder`` (deleted files included)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


def assert_one_line_naming(message: str, *parts: str):
    assert len(message.splitlines()) == 1, message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.skipif(sys.platform != "linux", reason="file-size limits and /proc/self/fd are Linux's")
@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif", "webp"])
def test_save_on_a_full_disk_is_one_line_and_leaks_nothing(video_io, noisy_frames, tmp_path, fmt):
    target = tmp_path / f"clip_00001_.{fmt}"
    with disk_full_at(20_000), pytest.raises(OSError) as error:
        video_io.write_video(noisy_frames, 8.0, fmt, str(target))
    message = str(error.value)
    assert_one_line_naming(message, "VE_SaveVideo", target.name, str(tmp_path), "Free space")
    assert ".partial" not in message and ".tmp" not in message, message
    assert os.listdir(tmp_path) == []
    assert open_files_in(tmp_path) == []  # no descriptor left on the deleted temporary file


@pytest.mark.skipif(sys.platform != "linux", reason="file-size limits are POSIX")
def test_safetensors_save_on_a_full_disk_is_one_line(files, tmp_path):
    pair = [({"w": torch.randn(20_000)}, {}, str(tmp_path / "a" / "x_00001_spatial.safetensors")),
            ({"w": torch.randn(10)}, {}, str(tmp_path / "b" / "x_00001_temporal.safetensors"))]
    with disk_full_at(20_000), pytest.raises(OSError) as error:
        files.save_safetensors_group(pair, "VE_SaveMotionLoRA")
    assert_one_line_naming(str(error.value), "VE_SaveMotionLoRA", "x_00001_spatial.safetensors",
                           str(tmp_path / "a"), "Free space")
    assert os.listdir(tmp_path / "a") == [] and os.listdir(tmp_path / "b") == []


@pytest.mark.skipif(sys.platform != "linux", reason="file-size limits are POSIX")
def test_attention_store_on_a_full_disk_is_one_line(tmp_path):
    from video_edit.kernels.fatezero import AttentionStore, BlockSpec

    block = BlockSpec(("input", 1), height=16, width=16, channels=32, heads=1)
    store = AttentionStore([block], torch.linspace(10, 0, 5), frames=4, context=77, directory=str(tmp_path))
    rows = torch.randn(4, block.tokens, block.channels)
    with disk_full_at(1000), pytest.raises(OSError) as error:
        store.put_self(block.key, 2, rows, rows)
    assert_one_line_naming(str(error.value), "attention_capture", str(tmp_path), "Free disk space")


def test_memory_limit_never_exceeds_the_available_ram(video_io, monkeypatch, tmp_path):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=2**20))  # 1 MiB available
    assert video_io.memory_limit_bytes(4096.0) <= 2**20
    clip = tmp_path / "clip.mp4"
    write_sample_clip(clip, frames=4, size=64)
    with pytest.raises(MemoryError, match="at most the RAM available now"):
        video_io.read_video(str(clip), n_frames=4, frame_stride=1, width=256, height=256, memory_limit_gb=4096.0)


def test_attention_store_limit_never_exceeds_the_free_disk(comfy_lib, monkeypatch, tmp_path):
    import shutil as shutil_module

    from video_edit.nodes import fatezero_capture

    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: shutil_module._ntuple_diskusage(2**40, 2**40 - 2**20,
                                                                                                   2**20))
    assert fatezero_capture.store_limit_bytes(4096.0, str(tmp_path)) <= 2**20
    assert fatezero_capture.store_limit_bytes(0.0, str(tmp_path)) <= 2**20


def test_no_save_replaces_a_file(video_io, files, noisy_frames, tmp_path):
    target = tmp_path / "clip_00001_.gif"
    target.write_bytes(b"previous")
    with pytest.raises(FileExistsError, match="not overwritten"):
        video_io.write_video(noisy_frames, 8.0, "gif", str(target))
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == [target.name]


def test_names_are_checked_before_any_file_is_created(video_io, files, noisy_frames, tmp_path):
    for name, problem in {"a\0b": "'\\x00'", "x" * 256: "bytes long", "CON": "reserves", "lpt1.mp4": "reserves",
                          "com9 .x": "reserves", "clip.": "ends with a dot", "clip ": "space", "a:b": "':'",
                          "a<b>": "'<'", "what?": "'?'", 'say"': "'\"'", "a|b": "'|'", "a*": "'*'", "tab\t": "'\\t'",
                          "a\\b": "'\\\\'"}.items():
        with pytest.raises(ValueError) as error:
            files.check_name(name, "filename_prefix", "VE_SaveVideo")
        assert_one_line_naming(str(error.value), "filename_prefix", problem)
    for good in ("clip", "CONSOLE", "com10", "a.b", "été_clip", "x" * 240):
        files.check_name(good, "filename_prefix", "VE_SaveVideo")
    with pytest.raises(ValueError, match="bytes long"):
        video_io.write_video(noisy_frames, 8.0, "gif", str(tmp_path / ("x" * 250 + "_00001_.gif")))
    assert os.listdir(tmp_path) == []


def test_names_near_the_length_limit_still_save(video_io, files, noisy_frames, tmp_path):
    """The temporary file's name must not be longer than the final one (it was: prefixes of ~236-244 failed)."""
    target = tmp_path / ("x" * 240 + "_00001_.gif")  # 251 characters: fits
    video_io.write_video(noisy_frames[:2], 8.0, "gif", str(target))
    assert os.listdir(tmp_path) == [target.name]
    stem = "y" * 225
    files.save_safetensors_group([({"w": torch.ones(2)}, {}, str(tmp_path / f"{stem}_00001_spatial.safetensors"))],
                                 "VE_SaveMotionLoRA")
    assert f"{stem}_00001_spatial.safetensors" in os.listdir(tmp_path)


def test_confinement_follows_windows_paths(files):
    roots = [r"C:\ComfyUI\input", r"\\server\share\comfy\output"]
    inside = [r"C:\ComfyUI\input\clip.mp4", r"c:\comfyui\INPUT\sub\clip.mp4", "C:/ComfyUI/input/clip.mp4",
              r"\\SERVER\share\comfy\output\edit.mp4", r"C:\ComfyUI\input\sub\..\clip.mp4"]
    outside = [r"C:\ComfyUI\input", r"C:\ComfyUI\input\..\secret.mp4", r"C:\ComfyUI\inputs\clip.mp4",
               r"D:\ComfyUI\input\clip.mp4", r"\\server\other\comfy\output\x.mp4", r"C:\Windows\win.ini",
               "C:\\ComfyUI\\input\\a\0.mp4"]
    for path in inside:
        assert files.confined_path(path, roots, ntpath) is not None, path
    for path in outside:
        assert files.confined_path(path, roots, ntpath) is None, path


def test_a_refused_rename_is_one_line_and_leaves_nothing(files, tmp_path, monkeypatch):
    """Windows refuses to rename onto, or from, a file another program holds open."""
    def refuse(src, dst):
        raise PermissionError(13, "The process cannot access the file because it is being used by another process")

    monkeypatch.setattr(os, "replace", refuse)
    pair = [({"w": torch.ones(2)}, {}, str(tmp_path / "a" / "x_00001_spatial.safetensors")),
            ({"w": torch.ones(2)}, {}, str(tmp_path / "b" / "x_00001_temporal.safetensors"))]
    with pytest.raises(OSError) as error:
        files.save_safetensors_group(pair, "VE_SaveMotionLoRA")
    assert_one_line_naming(str(error.value), "VE_SaveMotionLoRA", "x_00001_spatial.safetensors", "Close any program")
    assert os.listdir(tmp_path / "a") == [] and os.listdir(tmp_path / "b") == []


def test_non_float_and_invalid_files_are_named(comfy_lib, tmp_path):
    from video_edit.nodes import tuned_io
    from video_edit.nodes.shared.files import read_safetensors

    for dtype in (torch.bool, torch.int8, torch.float64):
        path = tmp_path / f"weights_{str(dtype)[6:]}.safetensors"
        save_file({"query_delta.w": torch.zeros(2, 2, dtype=dtype)}, str(path))
        with pytest.raises(ValueError) as error:
            read_safetensors(str(path), "temporal_file")
        assert_one_line_naming(str(error.value), "temporal_file", path.name, str(dtype)[6:], "float32")
    for key, value, part in [("temporal_mask", '"evil"', "evil"), ("temporal_window", '"many"', "many"),
                             ("frame_groupnorm", '"yes"', "yes"), ("steps", "{not json", "invalid metadata")]:
        path = tmp_path / f"tuned_{key}.safetensors"
        metadata = {"video_edit_format": tuned_io.FORMAT, key: value}
        save_file({"query_delta.w": torch.zeros(2, 2)}, str(path), metadata=metadata)
        with pytest.raises(ValueError) as error:
            tuned_io.load_tuned(str(path))
        assert_one_line_naming(str(error.value), "tuned_file", path.name, part, "Save the tuning again")


# ----- through the executor: names, combos, the file list ---------------------------------------------------------

def output_entries(comfy) -> set[str]:
    return {str(p.relative_to(comfy.output_dir)) for p in comfy.output_dir.rglob("*")}


def test_bad_save_prefixes_are_named_and_create_nothing(comfy, graph, demo_settings):
    for prefix, part in {"": "has no file name", "ve_sub/": "has no file name", "a\0b": "'\\x00'",
                         "ve_sub/CON": "reserves", "x" * 250: "bytes long", "a:b": "':'"}.items():
        before = output_entries(comfy)
        g = graph()
        video = g.node("VE_LoadVideo", file="skier.mp4", n_frames=2, start_frame=0, frame_stride=1, width=64,
                       height=64, path="")
        g.node("VE_SaveVideo", images=video.out(0), fps=8.0, filename_prefix=prefix, format="mp4")
        message = refusal(comfy, g.finalize())
        assert_one_line_naming(message, "filename_prefix", part)
        assert output_entries(comfy) <= before | {"ve_sub"}, prefix  # no file, temporary or not


def test_load_video_names_nul_bytes_and_non_files(comfy, graph, outside):
    g = graph()
    load_video(g, path="skier\0.mp4")
    assert_one_line_naming(refusal(comfy, g.finalize()), "'path'", "NUL byte")
    folder = comfy.input_dir / "a_folder.mp4"
    folder.mkdir(exist_ok=True)
    g = graph()
    load_video(g, path=folder.name)
    assert_one_line_naming(refusal(comfy, g.finalize()), "'path'", "a_folder.mp4", "folder, pipe or device")


def test_load_video_lists_no_symlink_out_of_comfy_folders(comfy, outside):
    _, link = outside
    (comfy.input_dir / "a_folder.mp4").mkdir(exist_ok=True)
    files = comfy.object_info()["VE_LoadVideo"]["input"]["required"]["file"]
    options = files[0] if isinstance(files[0], list) else files[1]["options"]
    assert "skier.mp4" in options
    assert link.name not in options and "a_folder.mp4" not in options


def test_combo_values_are_checked_by_the_node(comfy, graph):
    g = graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
    patched = g.node("VE_SparseCausalAttention", model=ckpt.out(0), mode="bogus", start_percent=0.0, end_percent=1.0)
    g.node("PreviewAny", source=patched.out(0))
    assert_one_line_naming(refusal(comfy, g.finalize()), "mode", "'bogus'", "sparse_causal")


# ----- kill -9 during a save --------------------------------------------------------------------------------------

DIE_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, os.environ["COMFYUI_PATH"])
import comfy.options
comfy.options.enable_args_parsing()
from comfy.cli_args import args  # reads --base-directory and --cpu
assert args.base_directory and args.cpu
import torch
from video_edit.nodes.shared import files, motion_lora_files

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

moment = os.environ["DIE_WHILE"]
if moment == "writing":  # the spatial temporary is whole, the temporal one half written
    real_save_file, calls = files.save_file, []
    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half")
            die()
        real_save_file(tensors, path, metadata=metadata)
    files.save_file = save_file
else:  # renaming: the spatial file is in place, the temporal one still a temporary
    real_place = files.place
    def place(tmp, target, what):
        real_place(tmp, target, what)
        die()
    files.place = place
lora = {"a.lora_up.weight": torch.ones(4, 2), "a.lora_down.weight": torch.ones(2, 4), "a.alpha": torch.tensor(2.0)}
motion_lora_files.save_motion_lora({"diffusion_model." + k: v for k, v in lora.items()}, lora, "crash_" + moment)
"""


def listed_entries(base) -> set[str]:
    """Every file in the folders the pack saves to that ComfyUI's extension filter would list as a model or a video."""
    import folder_paths
    from video_edit.nodes.video_io import VIDEO_EXTENSIONS

    extensions = folder_paths.supported_pt_extensions | set(VIDEO_EXTENSIONS)
    return {str(p.relative_to(base)) for folder in ("models/loras", "models/video_edit_motion_lora", "output")
            for p in (base / folder).rglob("*") if p.is_file() and folder_paths.filter_files_extensions([p.name],
                                                                                                       extensions)}


def test_kill_9_at_any_moment_of_a_save_leaves_nothing_listed(tmp_path, tiny_models, graph):
    import subprocess
    import time

    from comfy_server import ComfyServer, default_comfyui_path

    base = tmp_path / "comfyui"
    server = ComfyServer(base)
    server.checkpoint_name = server.add_model("checkpoints", tiny_models["checkpoint"])
    for sub in ("loras", "video_edit_motion_lora"):
        server.models_dir(sub)
    journals = base / "user" / "__video_edit_saves"

    # A pair save killed while writing, then one killed between its two renames (each a process of its own).
    def crash_leftovers():
        return {p.name for p in (base / "models").rglob("*") if "crash" in p.name or ".partial" in p.name}

    for moment in ("writing", "renaming"):
        died = subprocess.run([sys.executable, "-P", "-c", DIE_DURING_SAVE, "--base-directory", str(base), "--cpu"],
                              env={**os.environ, "COMFYUI_PATH": str(default_comfyui_path()), "DIE_WHILE": moment},
                              capture_output=True, text=True, timeout=600)
        assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
        left = crash_leftovers()
        assert len(os.listdir(journals)) == 1, os.listdir(journals)
        if moment == "writing":
            assert len(left) == 2 and all(name.endswith(".partial") for name in left), left
        else:  # the next save rolled back the first crash; half of this pair really is in place
            assert "crash_renaming_00001_spatial.safetensors" in left and len(left) == 2, left

    server.start()
    try:
        info = server.object_info()
        for node, input_name in (("LoraLoader", "lora_name"), ("VE_LoadMotionLoRA", "spatial_file"),
                                 ("VE_LoadMotionLoRA", "temporal_file")):
            options = info[node]["input"]["required"][input_name][0]
            assert not [name for name in options if "crash" in name or "partial" in name], (node, options)
        assert not [p for p in (base / "models").rglob("*") if "crash" in p.name or ".partial" in p.name]
        assert os.listdir(journals) == []

        # A real server killed while VE_SaveVideo encodes: kill as soon as its temporary file exists.
        write_sample_clip(base / "input" / "clip.mp4", frames=20, size=96)
        g = graph()
        video = g.node("VE_LoadVideo", file="clip.mp4", n_frames=0, start_frame=0, frame_stride=1, width=256,
                       height=256, path="")
        frames = g.node("RepeatImageBatch", image=video.out(0), amount=8)
        g.node("VE_SaveVideo", images=frames.out(0), fps=8.0, filename_prefix="ve_crash/edit", format="mp4")
        listed_before = listed_entries(base)
        caught = None
        for _ in range(5):  # a save that ends before its temporary file is seen is simply repeated
            listed_before = listed_entries(base)
            prompt_id = server.queue(g.finalize())
            deadline = time.monotonic() + 600
            while caught is None and time.monotonic() < deadline:
                folder = base / "output" / "ve_crash"
                caught = next((p for p in folder.glob(".*.partial")), None) if folder.is_dir() else None
                if caught is None and prompt_id in server.get(f"/history/{prompt_id}"):
                    break
            if caught is not None:
                break
        assert caught is not None, "the save never showed its temporary file"
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert caught.exists() and listed_entries(base) == listed_before  # the temporary is listed nowhere
    finally:
        server.stop()

    restarted = ComfyServer(base)
    restarted.start()
    try:
        restarted.object_info()
        assert not caught.exists() and listed_entries(base) == listed_before
        assert os.listdir(journals) == []
    finally:
        restarted.stop()
