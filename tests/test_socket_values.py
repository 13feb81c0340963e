"""Values of the wrong kind on a node's non-widget sockets (an API client sending a file name to a VIDEO input):
ComfyUI passes them through, so every node of the pack refuses them itself, naming the input and the fix."""

from __future__ import annotations

import asyncio

import pytest
import torch

from comfy_server import ExecutionError


@pytest.fixture(scope="module")
def pack_nodes(comfy_lib):
    from video_edit.nodes import VideoEditExtension

    return asyncio.run(VideoEditExtension().get_node_list())


def socket_inputs(node):
    from comfy_api.latest import io

    return [s for s in node.define_schema().inputs if not isinstance(s, io.WidgetInput)]


def test_every_node_refuses_a_wrong_value_on_every_socket_naming_it(pack_nodes):
    """A file name, a number and a dict of the wrong shape on each socket: refused before the node runs."""
    checked = 0
    for node in pack_nodes:
        for socket in socket_inputs(node):
            for wrong in ("clip.mp4", 3, {"samples": "x"} if socket.get_io_type() == "LATENT" else 2.5):
                with pytest.raises(ValueError) as error:
                    node.execute(**{socket.id: wrong})
                message = str(error.value)
                assert f"input '{socket.id}'" in message and f"{socket.get_io_type()} output" in message, message
                checked += 1
    assert checked >= 3 * 30  # every node's sockets were reached


def test_right_values_pass_the_check(pack_nodes, sd15):
    """The check refuses nothing a real upstream node gives: the native types as ComfyUI builds them."""
    from video_edit.nodes.shared.socket_types import check_socket_values

    model, clip, vae = sd15
    values = {"MODEL": model, "CLIP": clip, "VAE": vae, "LATENT": {"samples": torch.zeros(2, 4, 8, 8)},
              "IMAGE": torch.zeros(2, 64, 64, 3), "MASK": torch.zeros(2, 64, 64),
              "CONDITIONING": clip.encode_from_tokens_scheduled(clip.tokenize("a skier"))}
    for node in pack_nodes:
        given = {s.id: values[s.get_io_type()] for s in socket_inputs(node) if s.get_io_type() in values}
        check_socket_values(node, given)  # raises on a refusal


def test_a_file_name_on_load_videos_video_socket_through_the_executor(comfy, demo_settings):
    """The reported case: before, ``'str' object has no attribute 'get_components'``."""
    prompt = {"1": {"class_type": "VE_LoadVideo", "inputs": {
        "file": "skier.mp4", "n_frames": 2, "start_frame": 0, "frame_stride": 1, "width": 64, "height": 64,
        "video": "skier.mp4"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(ExecutionError) as error:
        comfy.run(prompt)
    message = error.value.exception_message
    assert "input 'video' takes a video" in message and "get_components" not in message, message
