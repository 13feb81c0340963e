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


def all_workflows() -> dict:
    return {name: build for module in MODULES for name, build in module.WORKFLOWS.items()}


def set_inputs(prompt: dict, **values) -> dict:
    """Set every widget input with one of these names, on every node that has it (links stay links).

    Used to run the full-size workflows on the tiny test model: fewer frames and steps, small frames.
    """
    for node in prompt.values():
        for name, value in values.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt
