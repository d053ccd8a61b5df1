"""The precision the engine trains and the measurements time at: bf16 autocast on CUDA, float32
on CPU (CPU bf16 is slower than fp32 for these models)."""
import contextlib

import torch


def uses_bf16(device, amp):
    return amp and device.type == "cuda"


def autocast(device, amp):
    """bf16 autocast on CUDA when ``amp``; a no-op otherwise."""
    if uses_bf16(device, amp):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dtype_name(device, amp):
    return "bfloat16" if uses_bf16(device, amp) else "float32"
