r"""A deterministic SHA-256 of a model update, the same on the site and on the coordinator.

Invariant: the digest depends only on the tensor names and, per tensor, its dtype, shape and
values, never on dict order, memory layout, device or byte order. The hashed stream is::

    b"fedtwin-update-v1\\n"
    for each name in sorted order (by UTF-8 bytes):
        u32 len(name) || name (UTF-8)
        u32 len(dtype) || dtype (numpy name, e.g. "float32")
        u32 ndim || u64 dim for each dim
        u64 nbytes || the values, C order, little-endian

(integers big-endian). A tensor is anything numpy can take, an object with ``.numpy()``
(a Flower ``Array``, a CPU torch tensor) or a torch tensor on any device; torch is never
imported here unless a bfloat16 tensor (which numpy cannot hold) is given.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DOMAIN = b"fedtwin-update-v1\n"


def _as_numpy(value: Any) -> tuple[np.ndarray, str]:
    """The values as a numpy array, and the dtype name to hash."""
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor: off the graph and the device first
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch

            return value.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if array.dtype.hasobject:
        raise ValueError("an update tensor cannot hold Python objects")
    return array, array.dtype.name


def update_digest(tensors: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of a named set of tensors (a state dict or an ``ArrayRecord``).

    Parameters
    ----------
    tensors : Mapping[str, Any]
        Tensor name to numpy array, torch tensor or anything with a ``.numpy()`` method.
    """
    import numpy as np

    digest = hashlib.sha256(DOMAIN)
    for name in sorted(tensors, key=lambda key: key.encode("utf-8")):
        array, dtype_name = _as_numpy(tensors[name])
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        data = np.ascontiguousarray(little).tobytes()
        label = name.encode("utf-8")
        dtype = dtype_name.encode()
        digest.update(struct.pack(">I", len(label)) + label)
        digest.update(struct.pack(">I", len(dtype)) + dtype)
        digest.update(struct.pack(">I", array.ndim))
        digest.update(b"".join(struct.pack(">Q", dim) for dim in array.shape))
        digest.update(struct.pack(">Q", len(data)) + data)
    return "sha256:" + digest.hexdigest()
