"""comfyui-video-edit: text-driven video editing nodes for ComfyUI.

ComfyUI loads this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint`.
Node modules are imported lazily there, so ``kernels/`` stays importable without ComfyUI.
ComfyUI serves WEB_DIRECTORY at /extensions/<this folder>/; the frontend's node help panel reads each node's page
from its docs/<node id>.md there (written by tools/node_docs.py).
"""

WEB_DIRECTORY = "./docs/web"


async def comfy_entrypoint():
    from .nodes import VideoEditExtension

    return VideoEditExtension()
