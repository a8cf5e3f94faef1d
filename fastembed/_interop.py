"""Zero-copy input from other array libraries: anything that speaks DLPack (torch tensors, jax arrays, cupy
on the host, ...) becomes a numpy view of the same memory, so the kernels read and write it in place.

Only memory the CPU can address is accepted; a device array raises a ``ValueError`` that names the argument
and the device, before anything is read or written.
"""
import numpy as np

# DLPack device types whose memory numpy can address directly (numpy's own whitelist).
_HOST_DEVICES = {1: "CPU", 3: "CUDA pinned host", 11: "ROCm pinned host", 13: "CUDA managed"}
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 12: "ext_dev",
                 14: "oneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA"}


def from_dlpack(obj, name):
    """Return a numpy view of ``obj`` when it speaks DLPack, else ``obj`` unchanged.

    A numpy array is returned as it is. An object with ``__dlpack_device__`` must live in host memory; the
    result shares its memory (no copy), keeps its shape, strides and dtype, and is read-only when the
    exporter marks it so (jax arrays). A torch tensor that requires grad is read through ``detach()``: the
    result is numpy, outside autograd either way.
    """
    if isinstance(obj, np.ndarray) or not hasattr(type(obj), "__dlpack_device__"):
        return obj
    try:
        device_type, device_id = obj.__dlpack_device__()
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        raise ValueError(f"{name} cannot be read on the CPU: {exc}") from exc
    device_type = int(device_type)
    if device_type not in _HOST_DEVICES:
        device = _DEVICE_NAMES.get(device_type, f"DLPack device type {device_type}")
        raise ValueError(f"{name} lives on a {device} device (id {int(device_id)}); fastembed's kernels run "
                         f"on the CPU: move it to host memory first (e.g. tensor.cpu())")
    if getattr(obj, "requires_grad", False) and hasattr(obj, "detach"):
        obj = obj.detach()
    try:
        return np.from_dlpack(obj)
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{name} cannot be shared through DLPack: {exc}") from exc
