"""The pack's workflows, written as API graphs; tools/build_workflows.py turns them into workflows/*.json.

Each module exposes ``WORKFLOWS``: file name -> function returning an API prompt (``GraphBuilder(prefix="")``).
"""

from . import fatezero, motiondirector, tokenflow, tune_a_video

MODULES = [tune_a_video, tokenflow, fatezero, motiondirector]


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
