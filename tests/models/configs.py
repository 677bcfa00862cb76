"""The bit-width configurations and network kinds the model tests build and compare."""

from __future__ import annotations

from typing import Any

# Three bit-width configurations; each is built as both network kinds.
BIT_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "narrow": dict(
        input_bits=10,
        input_integer=5,
        weight_bits=4,
        bias_bits=6,
        act_bits=4,
        act_integer=2,
        out_bits=8,
        out_integer=3,
        hidden=(16, 8),
    ),
    "wide": dict(
        input_hw_bits=18,
        input_bits=16,
        input_integer=8,
        weight_bits=10,
        weight_integer=1,
        bias_bits=10,
        act_bits=12,
        act_integer=6,
        out_bits=16,
        out_integer=7,
        hidden=(24,),
    ),
}
KINDS = ("ad", "classifier")
# The shipped anomaly trigger's hardware network (models/ad_shipped.yaml: the student, a
# classifier-shaped 57 -> 16 -> 1 network), read from the file so the tests follow it.
SHIPPED = "shipped"
