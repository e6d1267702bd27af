"""Where and how tensors are computed: the device ("auto" → CUDA when present), the bf16 choice, CPU threads."""

from __future__ import annotations

import contextlib
import re

import torch


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when a GPU is visible, else "cpu"; an explicit device must exist.

    Raises:
        ValueError: for an unknown device string or a CUDA device on a machine without one.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if re.fullmatch(r"cuda(:\d+)?", device or ""):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: no CUDA device is available here; use 'auto' or 'cpu'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise ValueError(f"device={device!r}: allowed values are auto, cpu, cuda, cuda:N")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch CPU threads (0 = leave the setting alone), restoring it afterwards."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def use_bf16(precision: str, device: str, on_cpu: bool = False) -> bool:
    """Whether to autocast to bf16. `precision` "bf16" or "fp32" decides; "auto" is bf16 on CUDA, and on a CPU only
    when `on_cpu` and oneDNN supports bf16 there (emulated bf16 is slower than fp32, and fp32 keeps CPU results
    exact, so most stages pass `on_cpu=False`)."""
    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return True
    if not on_cpu:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent from some builds
        return False


def autocast(device: str, enabled: bool):
    """`torch.autocast` to bf16 on `device`'s type (a no-op context when not `enabled`)."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


def math_attention():
    """A context in which `scaled_dot_product_attention` runs as plain matmuls: differentiable twice (the fused
    kernels have no double backward), and on CPUs faster for short sequences."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
