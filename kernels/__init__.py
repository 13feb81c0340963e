"""The math of the pack: pure torch, no ComfyUI import, tested on its own."""
