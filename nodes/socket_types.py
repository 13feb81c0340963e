"""The pack's own socket types, for data no native ComfyUI type carries; named here once for every module."""

from comfy_api.latest import io

InversionType = io.Custom("VE_INVERSION")  # kernels.inversion.Inversion: the clip at every DDIM level, and captures
CaptureType = io.Custom("VE_ATTENTION_CAPTURE")  # what VE_DDIMInvert also records: anything with key and attach()
MotionLoRA = io.Custom("VE_MOTION_LORA")  # MotionDirector's temporal LoRA tensors
VideoSet = io.Custom("VE_CLIP_SET")  # MotionDirector's training videos, each with its prompt (name kept for saved
#                                      workflows: "clip" there means a video clip)

ATTENTION_CAPTURE = "attention"  # the Inversion.captures key of FateZero's AttentionStore
