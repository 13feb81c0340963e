"""The pack's workflows, written as API graphs; tools/build_workflows.py turns them into workflows/*.json.

Each module exposes ``WORKFLOWS``: file name -> function returning an API prompt (``GraphBuilder(prefix="")``).
"""

from . import fatezero, make_your_video, motiondirector, tokenflow, tune_a_video

MODULES = [tune_a_video, tokenflow, fatezero, motiondirector, make_your_video]


# Workflows that load what another one saves (a tuned model, motion LoRAs): consumer -> producer.
PRODUCERS = {
    "tune_a_video_reuse": "tune_a_video_edit",
    "tokenflow_on_tuned": "tune_a_video_edit",
    "fatezero_shape_edit": "tune_a_video_edit",
    "motiondirector_generate": "motiondirector_train",
    "make_your_video_depth": "motiondirector_train",
}


def note(name: str) -> str | None:
    """The note a workflow carries for the artist: which other workflow must run first."""
    producer = PRODUCERS.get(name)
    if producer is None:
        return None
    what = "motion LoRAs" if producer == "motiondirector_train" else "tuned model"
    return (f"This workflow loads the {what} that {producer}.json saves. Run {producer} first (once), then pick "
            f"its file in the loader node: the first save is numbered _00001_.")


def base_model(name: str) -> str:
    """The base model a workflow's checkpoint is: ``sd15`` (most), or another one the demo must provide."""
    return next((m.BASE_MODELS[name] for m in MODULES if name in getattr(m, "BASE_MODELS", {})), "sd15")


def all_workflows() -> dict:
    return {name: build for module in MODULES for name, build in module.WORKFLOWS.items()}


def set_inputs(prompt: dict, **values) -> dict:
    """Set every widget input with one of these names, on every node that has it (links stay links)."""
    for node in prompt.values():
        for name, value in values.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt


def shrink(prompt: dict, frames: int, size: int, steps: int) -> dict:
    """Cut a full-size workflow to a CPU's size, the one way the demo and the tests both use.

    Every clip and latent batch gets ``frames`` frames of ``size``², every tuning, training, inversion and
    sampling run ``steps`` steps; what depends on those follows: an inversion keeps the levels of a ``steps``-step
    sampler (TokenFlow's 500 / keep 50 becomes steps / keep steps), keyframe chunks and context windows span at
    most half the clip (so windows and several keyframes still happen), the causal window at most the clip.
    """
    set_inputs(prompt, n_frames=frames, batch_size=frames, width=size, height=size, steps=steps)
    half = max(1, frames // 2)
    limits = {"keep_steps": steps, "keyframe_chunk_size": half, "context_length": half,
              "context_overlap": half // 2, "temporal_window": frames - 1}
    for node in prompt.values():
        for name, limit in limits.items():
            value = node["inputs"].get(name)
            if isinstance(value, int):
                node["inputs"][name] = min(value, limit)
    return prompt
