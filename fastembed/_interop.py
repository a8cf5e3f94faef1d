"""Zero-copy input from other array libraries: anything that speaks DLPack (torch tensors, jax arrays, cupy
on the host, ...) becomes a numpy view of the same memory, so the kernels read and write it in place.

Only memory the CPU can address is accepted; a device array raises a ``ValueError`` that names the argument
and the device, before anything is read or written.
"""
import sys

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
    if isinstance(obj, np.ndarray):
        return obj
    # torch tensors take torch's own zero-copy view, several times cheaper than a DLPack capsule (which
    # matters for small batches); torch is only looked up, never imported here.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if not obj.is_cpu:
            _refuse_device(name, str(obj.device))
        try:
            return (obj.detach() if obj.requires_grad else obj).numpy()
        except (TypeError, RuntimeError) as exc:
            raise TypeError(f"{name} cannot be shared with numpy without a copy: {exc}") from exc
    if not hasattr(type(obj), "__dlpack_device__"):
        return obj
    try:
        device_type, device_id = obj.__dlpack_device__()
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        raise ValueError(f"{name} cannot be read on the CPU: {exc}") from exc
    device_type = int(device_type)
    if device_type not in _HOST_DEVICES:
        _refuse_device(name, f"a {_DEVICE_NAMES.get(device_type, f'DLPack type {device_type}')} device "
                             f"(id {int(device_id)})")
    try:
        return np.from_dlpack(obj)
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{name} cannot be shared with numpy without a copy: {exc}") from exc


def _refuse_device(name, where):
    raise ValueError(f"{name} is on {where}; fastembed's kernels run on the CPU: move it to host memory "
                     f"first (e.g. tensor.cpu())")
