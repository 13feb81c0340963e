"""ComfyUI glue. Node modules, one per capability, sit here and each expose ``NODES`` (V3 node classes); they
import the shared machinery in ``shared/``, never each other: ``files`` (model folders, atomic saves, checked
loads), ``socket_types``, ``inputs`` (input guards), ``patcher`` (keys, wrappers and weight patches on a
ModelPatcher), ``unet_call`` (the state carried through one UNet call), ``attention_slots`` (the one owner of the
attention slots), ``comfy_internals`` (every ComfyUI internal the pack uses), ``training`` (the training loop inside
ComfyUI's sampler), ``video_unet`` (the inflated UNet and tuned weights), ``motion_lora_files``, ``plots``,
``windowing`` (what context windows share with attention patches), ``schema_fields`` (schema fields only newer
ComfyUI accepts), ``animatediff`` (AnimateDiff-Evolved's motion module on our MODELs)."""

import logging

from comfy_api.latest import ComfyExtension

from . import (compare, context_windows, fatezero, fatezero_capture, inflate, inversion, loss_plot, motion_lora_io,
               motiondirector, sparse_causal, tokenflow, tuned_io, tuning, video_io)
from .shared.files import recover_unfinished_saves
from .video_io import install_sample_clips

NODE_MODULES = [video_io, compare, sparse_causal, inflate, tuning, loss_plot, tuned_io, inversion, fatezero_capture,
                fatezero, motiondirector, motion_lora_io, tokenflow, context_windows]


class VideoEditExtension(ComfyExtension):
    async def get_node_list(self):
        # Called once at start-up (ComfyUI 0.3.75 never calls on_load): roll back the saves a crashed ComfyUI left
        # half done (temporary files, half a pair) before anything lists the model folders.
        for path in recover_unfinished_saves():
            logging.info("video_edit: removed %s, left by a save that did not finish", path)
        try:
            for path in install_sample_clips():
                logging.info("video_edit: copied the sample clip %s (the shipped workflows open with it)", path)
        except OSError as error:  # a read-only input folder: the workflows then ask for a clip
            logging.warning("video_edit: could not copy the sample clips into the input folder: %s", error)
        return [node for module in NODE_MODULES for node in module.NODES]
