"""The main workflow of each method in a ComfyUI started as artists start it on smaller machines: half-precision
UNet weights (``--fp16-unet``, ``--bf16-unet``) and the memory flag that applies on a CPU
(``--disable-smart-memory``: every model is unloaded after each run, so the temporal layers are ejected and
injected again; ComfyUI refuses ``--lowvram``/``--novram`` together with ``--cpu``). Shrunk to 2 frames of 64x64
and 2 steps.

Tuning refuses a non-finite loss (TrainingSampler.check_finite), so a finished run trained on finite losses; a
non-finite edit would be saved as black frames (video_io turns NaN into 0), so every saved video must vary. That
the tuning loss falls in half precision is tests/test_half_precision.py's, in-process, where it can be measured at
fixed timesteps; partial loading of the injected layers is checked there too."""

import cv2
import numpy as np
import pytest

from comfy_server import ComfyServer

FLAGS = [("--fp16-unet",), ("--bf16-unet",), ("--disable-smart-memory",)]
WORKFLOWS = ["tune_a_video_edit", "motiondirector_train", "tokenflow_edit", "fatezero_edit"]
FRAMES = 2


@pytest.fixture(scope="module", params=FLAGS, ids=" ".join)
def server(request, tmp_path_factory, tiny_models):
    from sample_clip import write_sample_clip

    server = ComfyServer(tmp_path_factory.mktemp("comfyui"), extra_args=request.param)
    server.checkpoint_name = server.add_model("checkpoints", tiny_models["checkpoint"])
    server.controlnet_name = server.add_model("controlnet", tiny_models["controlnet"])
    server.start()
    write_sample_clip(server.input_dir / "skier.mp4", frames=20, size=96)
    yield server
    server.stop()


def frames_of(path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_with_finite_output(server, comfy_lib, name):
    from workflow_graphs import all_workflows, set_inputs

    prompt = set_inputs(all_workflows()[name](), ckpt_name=server.checkpoint_name,
                        control_net_name=server.controlnet_name, file="skier.mp4", n_frames=FRAMES, width=64,
                        height=64, steps=2, keep_steps=0, batch_size=FRAMES, keyframe_chunk_size=2)
    outputs = server.run(prompt)
    videos = [p for p in server.output_files(outputs) if p.suffix == ".mp4"]
    assert videos, f"{name} saved no video: {outputs}"
    for video in videos:
        frames = frames_of(video)
        assert len(frames) == FRAMES
        assert all(frame.std() > 1 for frame in frames), f"{video.name}: a uniform frame (a non-finite edit?)"
