"""comfyui-video-edit: text-driven video editing nodes for ComfyUI.

ComfyUI loads this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint`.
Node modules are imported lazily there, so ``kernels/`` stays importable without ComfyUI.
"""


async def comfy_entrypoint():
    from .nodes import VideoEditExtension

    return VideoEditExtension()
