"""The FiT / FiTv2 backbone, its layers and 2D RoPE."""

from .fit import FiT, build_model
from .rope import NAMED_SCALINGS, RopeScaling, rope_scaling, rope_tables

__all__ = ["NAMED_SCALINGS", "FiT", "RopeScaling", "build_model", "rope_scaling", "rope_tables"]
