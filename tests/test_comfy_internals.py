"""One test per ComfyUI internal the pack relies on (nodes/shared/comfy_internals.py, and the resampling layer
class names of kernels/unet_layout.py), run against the ComfyUI the tests use (COMFYUI_PATH, default 0.3.75): each
fails when ComfyUI changes what the pack relies on, so an update shows here what to fix, in one file."""

import inspect

import pytest
import torch

FRAMES, H, W = 2, 8, 8


@pytest.fixture(scope="module")
def ci(comfy_lib):
    from video_edit.nodes.shared import comfy_internals

    return comfy_internals


@pytest.fixture(scope="module")
def setup(sd15):
    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a man is skiing"))
    return model, cond


def sample(model, cond, guider=None):
    """One Euler step of a tiny clip, through ComfyUI's sampling stack (with ``guider``: that guider's sample)."""
    import comfy.sample
    import comfy.samplers

    x = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))
    sampler, sigmas = comfy.samplers.sampler_object("euler"), torch.tensor([4.0, 0.0])
    if guider is not None:
        return guider.sample(x, torch.zeros_like(x), sampler, sigmas, disable_pbar=True, seed=0)
    return comfy.sample.sample_custom(model, x, 1.0, sampler, sigmas, cond, cond, torch.zeros_like(x),
                                      disable_pbar=True)


def test_every_internal_has_a_test_here(ci):
    source = open(__file__, encoding="utf-8").read()
    names = [name for name, value in vars(ci).items() if getattr(value, "__module__", None) == ci.__name__
             and not name.startswith("_")] + ["BasicGuider"]
    assert len(names) > 10
    assert [name for name in names if f"ci.{name}" not in source] == []


def test_loaded_patchers_injected_clones_and_ejected(ci, setup):
    import comfy.model_management
    from comfy.patcher_extension import PatcherInjection

    model, _ = setup
    events = []
    clone = model.clone()
    clone.set_injections("comfy_internals_test", [PatcherInjection(inject=lambda p: events.append("in"),
                                                                   eject=lambda p: events.append("out"))])
    try:
        comfy.model_management.load_models_gpu([clone])
        assert any(p is clone for p in ci.loaded_patchers())
        assert ci.injected_clones_of(model) == [clone] and events == ["in"]
        with ci.ejected(clone):
            assert events == ["in", "out"] and ci.injected_clones_of(model) == []
        assert events == ["in", "out", "in"]
    finally:
        comfy.model_management.unload_all_models()
    assert not any(p is clone for p in ci.loaded_patchers())


def test_diffusers_to_ldm_unet_keys_names_every_unet_weight(ci, setup):
    model, _ = setup
    mapping = ci.diffusers_to_ldm_unet_keys(model)
    assert set(model.model.diffusion_model.state_dict()) <= set(mapping.values())  # and layers this UNet lacks
    assert mapping["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"] == \
        "input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"


def test_unpatched_unet_weights_while_a_patched_injected_clone_is_loaded(ci, setup):
    import comfy.model_management
    from comfy.patcher_extension import PatcherInjection

    model, _ = setup
    key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    keys = set(model.model.diffusion_model.state_dict())
    original = model.model.diffusion_model.state_dict()[key].clone()
    clone = model.clone()
    clone.add_patches({f"diffusion_model.{key}": (torch.ones_like(original),)})
    block = model.model.diffusion_model.input_blocks[1][1]

    def rename(patcher):  # an injection that renames keys, as the pack's inflation does
        block.transformer_blocks[0] = torch.nn.ModuleDict({"block": block.transformer_blocks[0]})

    def restore(patcher):
        block.transformer_blocks[0] = block.transformer_blocks[0]["block"]

    clone.set_injections("comfy_internals_test", [PatcherInjection(inject=rename, eject=restore)])
    try:
        comfy.model_management.load_models_gpu([clone])
        assert key not in model.model.diffusion_model.state_dict()  # renamed
        assert torch.equal(block.transformer_blocks[0]["block"].attn1.to_q.weight, original + 1)  # patched in place
        weights = ci.unpatched_unet_weights(model)
        assert torch.equal(weights[key], original) and set(weights) == keys
    finally:
        comfy.model_management.unload_all_models()


def test_weight_functions_apply_to_a_cast_layer(ci, comfy_lib):
    import comfy.ops

    layer = comfy.ops.manual_cast.Linear(2, 2, bias=False)
    assert ci.weight_functions(layer) == []
    double = lambda w: 2 * w  # noqa: E731
    ci.set_weight_functions(layer, [double])
    assert ci.weight_functions(layer) == [double]
    x = torch.eye(2)
    torch.testing.assert_close(layer(x), 2 * x @ layer.weight.T)


def test_wrapped_guider_and_base_model(ci, setup):
    from comfy.patcher_extension import WrappersMP

    model, cond = setup
    seen = {}

    def outer(executor, *args, **kwargs):
        guider = ci.wrapped_guider(executor)
        seen["conds"], seen["options"] = set(guider.conds), guider.model_options
        return executor(*args, **kwargs)

    def apply_model(executor, x, *args, **kwargs):
        seen["process_latent_in"] = ci.wrapped_base_model(executor).process_latent_in
        return executor(x, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "comfy_internals_test", outer)
    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "comfy_internals_test", apply_model)
    sample(clone, cond)
    assert {"positive", "negative"} <= seen["conds"] and "transformer_options" in seen["options"]
    assert seen["process_latent_in"].__self__ is model.model


def test_controlnet_chain_and_hints(ci, comfy_lib):
    import comfy.controlnet

    first, second = comfy.controlnet.ControlBase(), comfy.controlnet.ControlBase()
    hint = torch.rand(FRAMES, 3, 8, 8)
    second.set_cond_hint(hint)
    second.set_previous_controlnet(first)
    assert list(ci.controlnet_chain(second)) == [second, first] and list(ci.controlnet_chain(None)) == []
    assert ci.controlnet_hint(second) is hint and ci.controlnet_hint(first) is None
    second.cond_hint = hint
    ci.set_controlnet_hint(second, hint[:1])
    assert ci.controlnet_hint(second).shape[0] == 1 and second.cond_hint is None
    # a ControlNet rebuilds its scaled hint from cond_hint_original whenever cond_hint is None
    source = inspect.getsource(comfy.controlnet.ControlNet.get_control)
    assert "self.cond_hint is None" in source and "self.cond_hint_original" in source


def test_model_cond_rows(ci, comfy_lib):
    import comfy.conds

    for kind in (comfy.conds.CONDRegular, comfy.conds.CONDCrossAttn):
        cond = kind(torch.arange(8.0).view(4, 2, 1))
        rows = ci.model_cond_rows(cond, [1, 3])
        assert type(rows) is kind
        torch.testing.assert_close(rows.cond, cond.cond[[1, 3]])


def test_replace_patches_and_their_dict(ci, setup):
    class Slots(dict):
        def copy(self):
            return Slots(self)

    model, _ = setup
    clone, patch, other = model.clone(), object(), object()
    assert ci.replace_patches(clone.model_options, "attn1") == {}
    clone.set_model_attn1_replace(patch, "input", 1, 0)
    assert ci.replace_patches(clone.model_options, "attn1") == {("input", 1, 0): patch}
    ci.wrap_replace_patches(clone, "attn1", Slots)
    clone.set_model_attn1_replace(other, "output", 1, 0)  # ComfyUI copies the dict through its own copy()
    again = clone.clone()
    for options in (clone.model_options, again.model_options):
        assert type(ci.replace_patches(options, "attn1")) is Slots
        assert set(ci.replace_patches(options, "attn1")) == {("input", 1, 0), ("output", 1, 0)}
    # ModelPatcher.clone copies the patches: another pack's .add on a clone's patch never reaches the original
    assert ci.replace_patches(again.model_options, "attn1")[("input", 1, 0)] is not patch


def test_wrapped_replace_patches_survive_a_clone_that_copies_only_dicts(ci, setup, monkeypatch):
    """Newer ComfyUI's clone copies model_options with comfy.utils.deepcopy_list_dict (dicts and lists only): the
    wrap_replace_patches clone callback still gives the clone the wrapped type and its own patch copies."""
    import types

    import comfy.model_patcher

    def deepcopy_list_dict(obj):  # comfy.utils.deepcopy_list_dict of newer ComfyUI, without its memo
        if isinstance(obj, dict):
            return {key: deepcopy_list_dict(value) for key, value in obj.items()}
        return [deepcopy_list_dict(item) for item in obj] if isinstance(obj, list) else obj

    class Slots(dict):
        pass

    model, _ = setup
    clone, patch = model.clone(), [1]
    clone.set_model_attn1_replace(patch, "input", 1, 0)
    ci.wrap_replace_patches(clone, "attn1", Slots)
    # 0.3.75's clone deep-copies with the module's copy.deepcopy; newer ComfyUI's already copies dicts and lists only
    monkeypatch.setattr(comfy.model_patcher, "copy", types.SimpleNamespace(deepcopy=deepcopy_list_dict,
                                                                           copy=__import__("copy").copy),
                        raising=False)
    again = clone.clone()
    copied = ci.replace_patches(again.model_options, "attn1")
    assert type(copied) is Slots and copied[("input", 1, 0)] == patch and copied[("input", 1, 0)] is not patch
    monkeypatch.undo()
    once_more = again.clone()  # the callback travels with the clones
    assert type(ci.replace_patches(once_more.model_options, "attn1")) is Slots
    assert len(once_more.get_callbacks(comfy.model_patcher.CallbacksMP.ON_CLONE, ci.COPY_WRAPPED_SLOTS)) == 1


def test_register_model_folder(ci, comfy_lib):
    import os

    import folder_paths

    name = "video_edit_internals_test"
    try:
        ci.register_model_folder(name, {".safetensors"})
        assert folder_paths.get_folder_paths(name) == [os.path.join(folder_paths.models_dir, name)]
        assert folder_paths.folder_names_and_paths[name][1] == {".safetensors"}
        ci.register_model_folder(name, {".other"})  # already registered: left as it is
        assert folder_paths.folder_names_and_paths[name][1] == {".safetensors"}
    finally:
        folder_paths.folder_names_and_paths.pop(name, None)


def test_basic_guider_conds_and_prediction_without_cfg(ci, setup):
    import comfy.samplers

    assert list(inspect.signature(comfy.samplers.CFGGuider.predict_noise).parameters) == [
        "self", "x", "timestep", "model_options", "seed"]
    model, cond = setup

    class OwnConds(ci.BasicGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):
            return ci.predict_without_cfg(self, x, timestep, self.conds["mine"], model_options, seed)

    ours = OwnConds(model)
    ci.set_guider_conds(ours, {"mine": cond})  # sampling reads them back as ours.conds["mine"]
    official = ci.BasicGuider(model)
    official.set_conds(cond)
    torch.testing.assert_close(sample(model, cond, ours), sample(model, cond, official))


def test_progress_bars_enabled(ci, comfy_lib):
    import comfy.utils

    before = ci.progress_bars_enabled()
    try:
        comfy.utils.set_progress_bar_enabled(False)
        assert ci.progress_bars_enabled() is False
        comfy.utils.set_progress_bar_enabled(True)
        assert ci.progress_bars_enabled() is True
    finally:
        comfy.utils.set_progress_bar_enabled(before)


def test_resampling_layer_names_match_comfyui(setup):
    from video_edit.kernels.unet_layout import DOWNSAMPLE, UPSAMPLE, has_layer

    model, _ = setup
    unet = model.model.diffusion_model
    levels = len(model.model.model_config.unet_config["channel_mult"])
    assert sum(has_layer(block, DOWNSAMPLE) for block in unet.input_blocks) == levels - 1
    assert sum(has_layer(block, UPSAMPLE) for block in unet.output_blocks) == levels - 1
