"""Schema fields that only newer ComfyUI versions accept, passed only where the running one does."""

import dataclasses

from comfy_api.latest import io

SCHEMA_FIELDS = {field.name for field in dataclasses.fields(io.Schema)}

# What artists type for each method (the search box matches display names, categories and these aliases).
TUNE_A_VIDEO_ALIASES = ("tune a video", "tune-a-video", "tav")
TOKENFLOW_ALIASES = ("tokenflow", "token flow")
FATEZERO_ALIASES = ("fatezero", "fate zero")
MOTIONDIRECTOR_ALIASES = ("motiondirector", "motion director", "motion lora")
DREAMIX_ALIASES = ("dreamix",)
MAKE_YOUR_VIDEO_ALIASES = ("make your video", "make-your-video")
VIDEO_EDIT_ALIASES = ("video edit", "video editing")


def search_aliases(*groups: tuple[str, ...]) -> dict:
    """``search_aliases=[...]`` to unpack into io.Schema where ComfyUI supports it (0.33 and newer), else nothing
    (ComfyUI 0.3.75's Schema has no such field and would refuse it)."""
    if "search_aliases" not in SCHEMA_FIELDS:
        return {}
    return {"search_aliases": [alias for group in groups for alias in group]}
