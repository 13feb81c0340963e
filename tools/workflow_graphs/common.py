"""Graph pieces the workflows share."""


def ddim_edit_and_save(g, ckpt, model, positive, negative, latent, video, cfg: float, seed: int, prefix: str,
                       steps: int = 50):
    """Sample the edit from an inverted latent (KSampler Advanced: no added noise, ddim on ddim_uniform, ``steps``),
    decode it and save the video, beside it the source and the edit side by side (``video``: VE_LoadVideo), and
    measure the edit (VE Edit Metrics: warp error along the source's flow, plotted per frame pair)."""
    edit = g.node("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=seed, steps=steps, cfg=cfg,
                  sampler_name="ddim", scheduler="ddim_uniform", positive=positive, negative=negative,
                  latent_image=latent, start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")
    frames = g.node("VAEDecode", samples=edit.out(0), vae=ckpt.out(2))
    g.node("VE_SaveVideo", images=frames.out(0), fps=video.out(1), filename_prefix=prefix, format="mp4")
    compare = g.node("VE_CompareVideos", before=video.out(0), after=frames.out(0), layout="side_by_side", gap=8)
    g.node("VE_SaveVideo", images=compare.out(0), fps=video.out(1), filename_prefix=f"{prefix}_before_after",
           format="mp4")
    g.node("VE_EditMetrics", source=video.out(0), edited=frames.out(0))
