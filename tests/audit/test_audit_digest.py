"""The update digest is the same on both sides of the wire and changes with any value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.audit import update_digest


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(4, 3, generator=generator),
        "encoder.bias": torch.randn(4, generator=generator),
        "head.weight": torch.randn(1, 4, generator=generator, dtype=torch.float64),
    }


def test_digest_ignores_order_layout_and_container() -> None:
    state = _state()
    as_numpy = {k: v.numpy() for k, v in reversed(state.items())}
    fortran = {**as_numpy, "encoder.weight": np.asfortranarray(as_numpy["encoder.weight"])}
    big_endian = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in as_numpy.items()}
    digest = update_digest(state)
    assert digest.startswith("sha256:") and len(digest) == 71
    assert update_digest(as_numpy) == update_digest(fortran) == update_digest(big_endian) == digest


def test_any_change_of_value_name_dtype_or_shape_changes_the_digest() -> None:
    state = _state()
    base = update_digest(state)
    nudged = {**state, "encoder.bias": state["encoder.bias"].clone()}
    nudged["encoder.bias"][2] += 1e-6
    renamed = {("decoder.bias" if k == "encoder.bias" else k): v for k, v in state.items()}
    retyped = {**state, "encoder.bias": state["encoder.bias"].double()}
    reshaped = {**state, "encoder.weight": state["encoder.weight"].reshape(3, 4)}
    digests = {update_digest(d) for d in (nudged, renamed, retyped, reshaped)}
    assert base not in digests and len(digests) == 4


def test_bfloat16_is_not_confused_with_uint16() -> None:
    bf16 = torch.ones(3, dtype=torch.bfloat16)
    same_bits = bf16.view(torch.int16).numpy().view(np.uint16)
    assert update_digest({"w": bf16}) != update_digest({"w": same_bits})


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="Python objects"):
        update_digest({"w": np.array([object()])})
