"""fitv2: FiTv2, the flexible vision transformer for diffusion."""

__version__ = "0.1.0"
