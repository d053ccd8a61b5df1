"""Parameter counts and inference timing (warm-up, synchronize, median of repeats)."""
import statistics
import time

import torch

from kdbench.precision import autocast, dtype_name


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(model, inputs, device, amp, repeats, warmup):
    """Median seconds of one forward pass of ``inputs``."""
    with autocast(device, amp):
        for _ in range(warmup):
            model(inputs)
        synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(inputs)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(model, example_input, device, amp, cfg):
    """Throughput at ``cfg['throughput_batch']`` (items/s) and latency at batch 1 (ms), with the
    conditions they were measured under."""
    was_training = model.training
    model.eval()
    batch = cfg["throughput_batch"]
    seconds = time_forward(model, example_input(batch), device, amp, cfg["throughput_repeats"], cfg["warmup"])
    latency = time_forward(model, example_input(1), device, amp, cfg["latency_repeats"], cfg["warmup"])
    model.train(was_training)
    return {
        "throughput": batch / seconds,
        "latency_ms": 1000.0 * latency,
        "throughput_batch": batch,
        "device_name": device_name(device),
        "dtype": dtype_name(device, amp),
        "threads": torch.get_num_threads(),
    }


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"
