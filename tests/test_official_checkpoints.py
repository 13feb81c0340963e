"""VE Load Tuned Model on an official Tune-A-Video checkpoint's UNet (issue 30.2): tiny official-format weights (a
diffusers UNet3D state dict: the base's diffusers weights with tuned query projections and temporal layers) loaded
on the base MODEL equal the official inflated UNet (tests/reference, derived from showlab/Tune-A-Video) on the same
weights; pickled files, another base and foreign files are refused by name."""

import pickle

import pytest
import torch
from reference.tav_diffusers import ReferenceTAV, build_reference_unet, ldm_to_diffusers_block_paths
from safetensors.torch import load_file, save_file
from tiny_models import tiny_unet_diffusers_config

FRAMES, TIMESTEP = 4, 500
OFFICIAL = "man_skate_250/unet/diffusion_pytorch_model.safetensors"


class Marker:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def official_state(ldm: dict, seed: int = 11) -> dict:
    """The tiny base UNet in diffusers names with what the official recipe tunes changed: attn1/attn2 to_q deltas and
    random temporal layers (norm_temp and attn_temp) after every transformer block, as train_tuneavideo.py saves it."""
    unet = build_reference_unet(ldm, tiny_unet_diffusers_config())
    generator = torch.Generator().manual_seed(seed)
    state = {key: value.clone() for key, value in unet.state_dict().items()}
    for key, value in state.items():
        if key.endswith(("attn1.to_q.weight", "attn2.to_q.weight")):
            value += 0.05 * torch.randn(value.shape, generator=generator)
    for path in ldm_to_diffusers_block_paths(unet).values():
        dim = state[f"{path}.attn1.to_q.weight"].shape[1]
        inner = state[f"{path}.attn1.to_q.weight"].shape[0]
        shapes = {"norm_temp.weight": (dim,), "norm_temp.bias": (dim,), "attn_temp.to_q.weight": (inner, dim),
                  "attn_temp.to_k.weight": (inner, dim), "attn_temp.to_v.weight": (inner, dim),
                  "attn_temp.to_out.0.weight": (dim, inner), "attn_temp.to_out.0.bias": (dim,)}
        for name, shape in shapes.items():
            state[f"{path}.{name}"] = 0.1 * torch.randn(shape, generator=generator) + (name == "norm_temp.weight")
    return state


def official_reference(state: dict, mode: str = "sparse_causal") -> ReferenceTAV:
    """The official inflated UNet on ``state``: diffusers' UNet with the reference's temporal layers and attention."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(tiny_unet_diffusers_config())
    temporal_parts = (".attn_temp.", ".norm_temp.")
    unet.load_state_dict({k: v for k, v in state.items() if not any(p in k for p in temporal_parts)}, strict=True)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    ldm_of = {diffusers: ldm for ldm, diffusers in ldm_to_diffusers_block_paths(unet).items()}
    temporal = {}
    for key, value in state.items():
        block = next((key.split(part)[0] for part in temporal_parts if part in key), None)
        if block is not None:
            temporal[f"{ldm_of[block]}.{key[len(block) + 1:]}"] = value
    return ReferenceTAV(unet.eval(), temporal, mode=mode, frame_groupnorm=True)


@pytest.fixture(scope="module")
def official(sd15, tiny_models, tmp_path_factory):
    """(base MODEL, CONDITIONING, official state, models folder, LoadTuned node class, sparse_causal module)."""
    import folder_paths

    from video_edit.nodes import sparse_causal, tuned_io

    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a man skateboarding"))
    ldm = {k: v for k, v in load_file(str(tiny_models["checkpoint"])).items() if k.startswith("model.diffusion_model.")}
    state = official_state(ldm)
    folder = tmp_path_factory.mktemp("video_edit_tuned")
    folder_paths.add_model_folder_path(tuned_io.FOLDER, str(folder))
    write(folder, OFFICIAL, state)
    return model, cond, state, folder, tuned_io.LoadTuned, sparse_causal


def write(folder, name: str, tensors: dict, metadata: dict | None = None) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return name


def eps(model, denoise, cond, latent, sigma):
    x = model.model.process_latent_in(latent)
    return x, (x - model.model.process_latent_in(denoise(model, latent, cond, sigma=sigma))) / sigma


def test_official_checkpoint_reproduces_the_official_unet(official, denoise):
    model, cond, state, _, load_tuned, sparse_causal = official
    loaded = load_tuned.execute(model, OFFICIAL).result[0]
    ours = sparse_causal.with_cross_frame_attention(loaded, "sparse_causal")
    sigma = float(model.get_model_object("model_sampling").sigma(torch.tensor(float(TIMESTEP))))
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    x, eps_base = eps(model, denoise, cond, latent, sigma)
    _, eps_ours = eps(ours, denoise, cond, latent, sigma)
    with torch.no_grad():
        eps_official = official_reference(state)(x / (sigma ** 2 + 1) ** 0.5, TIMESTEP, cond[0][0])
    difference = (eps_ours - eps_official).abs().max().item()
    print(f"official checkpoint vs official UNet3D: max abs difference {difference:.2e} "
          f"(eps magnitude {eps_official.abs().max().item():.2f})")
    assert difference < 1e-5
    # The tuned parts really act: the base MODEL is far from the official model.
    assert (eps_base - eps_official).abs().max().item() > 1e-2


def test_official_checkpoint_through_the_executor_saves_in_the_pack_format(official, comfy):
    """A real graph: Load Checkpoint -> VE Load Tuned Model (the official UNet) -> VE Save Tuned Model; the saved file
    holds the same tuning the node converts in-process (the server loads the same tiny checkpoint)."""
    from comfy_execution.graph_utils import GraphBuilder

    from video_edit.nodes import tuned_io
    from video_edit.nodes.shared.patcher import PatcherKeys

    model, _, state, _, load_tuned, _ = official
    write(comfy.models_dir(tuned_io.FOLDER), OFFICIAL, state)
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=comfy.checkpoint_name)
    loaded = g.node("VE_LoadTuned", model=ckpt.out(0), tuned_file=OFFICIAL)
    g.node("VE_SaveTuned", model=loaded.out(0), filename="man_skate_250", prompt="a man skateboarding")
    comfy.run(g.finalize())
    saved = tuned_io.load_tuned(str(comfy.models_dir(tuned_io.FOLDER) / "man_skate_250_00001_.safetensors"))
    expected = load_tuned.execute(model, OFFICIAL).result[0].get_attachment(PatcherKeys.TUNING)
    assert saved.metadata == {"official_checkpoint": OFFICIAL, "prompt": "a man skateboarding"}
    assert saved.frame_groupnorm and saved.mask == expected.mask
    for mine, theirs in ((saved.query_deltas, expected.query_deltas), (saved.temporal, expected.temporal)):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_half_precision_official_checkpoint_loads(official, tiny_models):
    """Official checkpoints published in fp16: the kept weights match the base within fp16 rounding."""
    model, _, state, folder, load_tuned, _ = official
    name = write(folder, "fp16/unet/diffusion_pytorch_model.safetensors", {k: v.half() for k, v in state.items()})
    from video_edit.nodes.shared.patcher import PatcherKeys

    tuning = load_tuned.execute(model, name).result[0].get_attachment(PatcherKeys.TUNING)
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"
    base = load_file(str(tiny_models["checkpoint"]))[f"model.diffusion_model.{key}"]  # the MODEL may be patched now
    official_weight = state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"].half().float()
    assert torch.equal(base + tuning.query_deltas[f"diffusion_model.{key}"], official_weight)
    assert tuning.frame_groupnorm and all(v.dtype == torch.float32 for v in tuning.temporal.values())


def test_pickled_checkpoint_is_refused_with_the_conversion_command(official):
    model, _, _, folder, load_tuned, _ = official
    (folder / "jeep_tuned_200" / "unet").mkdir(parents=True)
    marker = folder / "unpickled"
    (folder / "jeep_tuned_200" / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Marker(str(marker))))
    with pytest.raises(ValueError, match=r"tuned_file: diffusion_pytorch_model.bin is not a .safetensors file.*"
                                         r"python -c \"import torch, safetensors.torch as st; st.save_file\(.*torch.load\(r'.*"
                                         r"diffusion_pytorch_model.bin'.*r'.*diffusion_pytorch_model.safetensors'\)\""):
        load_tuned.execute(model, "jeep_tuned_200/unet/diffusion_pytorch_model.bin")
    assert not marker.exists()


def test_checkpoint_tuned_from_another_base_is_refused(official):
    model, _, state, folder, load_tuned, _ = official
    other = {k: v + 0.1 * v.abs().mean() if k.startswith("down_blocks.0.resnets.0.conv1.") else v
             for k, v in state.items()}
    name = write(folder, "other_base/unet/diffusion_pytorch_model.safetensors", other)
    with pytest.raises(ValueError, match=r"tuned_file: other_base/unet/diffusion_pytorch_model.safetensors was tuned "
                                         r"from another base model than the MODEL connected: its input_blocks.1.0.in_layers"
                                         r".2.(weight|bias) differs .*connect the base it was tuned from \(Tune-A-Video: "
                                         r"SD 1.4, FateZero: SD 1.5\)"):
        load_tuned.execute(model, name)
    query = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"
    name = write(folder, "other_layout/unet/diffusion_pytorch_model.safetensors", {**state, query: torch.ones(3, 5)})
    with pytest.raises(ValueError, match=r"other_layout/.* was tuned from another base model than the MODEL connected: "
                                         r"its input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight has shape \(3, 5\)"):
        load_tuned.execute(model, name)


def test_foreign_files_are_refused(official):
    model, _, state, folder, load_tuned, _ = official
    name = write(folder, "foreign.safetensors", {"encoder.weight": torch.ones(2)})
    with pytest.raises(ValueError, match="foreign.safetensors is not a Tune-A-Video file saved by VE Save Tuned Model"
                                         r".* nor an official Tune-A-Video UNet"):
        load_tuned.execute(model, name)
    extra = write(folder, "extra/unet/diffusion_pytorch_model.safetensors", {**state, "add_embedding.linear_1.weight": torch.ones(2)})
    with pytest.raises(ValueError, match=r"holds add_embedding.linear_1.weight, which has no place in the MODEL's UNet"):
        load_tuned.execute(model, extra)
    partial = {k: v for k, v in state.items() if not k.startswith("conv_out.")}
    name = write(folder, "partial/unet/diffusion_pytorch_model.safetensors", partial)
    with pytest.raises(ValueError, match=r"lacks the UNet weight out.2.(weight|bias)"):
        load_tuned.execute(model, name)


def test_split_sorts_an_official_state_into_queries_temporal_and_kept_weights():
    from video_edit.kernels.official_tav import is_official_unet3d, split_official_unet

    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    mapping = {f"{block}.attn1.to_q.weight": "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
               f"{block}.attn2.to_q.weight": "input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight",
               f"{block}.attn1.to_k.weight": "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight",
               "conv_in.weight": "input_blocks.0.0.weight"}
    state = {key: torch.full((1,), float(i)) for i, key in enumerate(
        [*mapping, f"{block}.attn_temp.to_out.0.bias", f"{block}.norm_temp.weight", "mid_block.attentions.0."
         "transformer_blocks.0.attn_temp.to_q.weight", "text_model.embeddings.weight"])}
    split = split_official_unet(state, mapping)
    assert sorted(split.queries) == ["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                                     "input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"]
    assert sorted(split.kept) == ["input_blocks.0.0.weight", "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"]
    assert sorted(split.temporal) == ["input_blocks.1.1.transformer_blocks.0.attn_temp.to_out.0.bias",
                                      "input_blocks.1.1.transformer_blocks.0.norm_temp.weight"]
    # A temporal layer of a block this UNet lacks and a foreign weight have no place.
    assert split.unknown == ["mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight",
                             "text_model.embeddings.weight"]
    assert is_official_unet3d(state) and not is_official_unet3d(mapping)


def test_half_precision_copies_are_within_the_tolerance_another_base_is_not():
    from video_edit.kernels.official_tav import SAME_WEIGHT_TOLERANCE, weight_difference

    base = torch.randn(320, 320, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float16, torch.bfloat16):
        assert weight_difference(base.to(dtype), base) < SAME_WEIGHT_TOLERANCE / 2
    assert weight_difference(base * 1.01, base) > SAME_WEIGHT_TOLERANCE
