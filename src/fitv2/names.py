"""Every name the command line and the library accept, declared once and torch-free.

The library validates against these (``fitv2.model.rope`` builds its scalings from
:data:`ROPE_METHODS`, the attention module maps :data:`ATTENTION_NAMES` to its kernels, the
solvers check :data:`SDE_DIFFUSIONS` ...), and the options of the command line and the page
offer them, so ``fitv2 --help`` needs no torch and nothing is kept equal by hand.
"""

from __future__ import annotations

# RoPE extrapolation by name: (frequency rule, scale each axis by its own length, attention scale).
ROPE_METHODS: dict[str, tuple[str, bool, str]] = {
    "none": ("none", False, "none"),
    "pi": ("pi", False, "none"),
    "ntk": ("ntk", False, "none"),
    "ntk-by-parts": ("ntk-by-parts", False, "none"),
    "yarn": ("yarn", False, "none"),
    "vision-ntk": ("ntk", True, "none"),
    "vision-ntk-by-parts": ("ntk-by-parts", True, "none"),
    "vision-yarn": ("yarn", True, "none"),
    # FiTv2's "VisionNTK + Attn-Scale" as published: the reference's ntk-aware-pro2 with --decouple.
    "vision-ntk+attn-scale": ("ntk", True, "area"),
    "ntk+attn-scale": ("ntk", False, "area"),
    "ntk+side-attn-scale": ("ntk", False, "side"),
}
# The published code's names (its custom_freqs and sampler --interpolation values) for the same settings.
ROPE_ALIASES: dict[str, str] = {
    "normal": "none",
    "no": "none",
    "linear": "pi",
    "ntk-aware": "ntk",
    "dynntk": "ntk",
    "partntk": "ntk-by-parts",
    "ntk-aware-pro1": "ntk+side-attn-scale",
    "ntkpro1": "ntk+side-attn-scale",
    "ntk-aware-pro2": "ntk+attn-scale",
    "ntkpro2": "ntk+attn-scale",
}
# What --rope accepts: 'auto' (the model decides: fitv2.model.rope.auto_rope), the methods, the aliases.
ROPE_NAMES = ("auto", *ROPE_METHODS, *ROPE_ALIASES)
# The frequency rules a RoPE method is built from, and the attention (logit) scales.
FREQUENCY_RULES = ("none", "pi", "ntk", "ntk-by-parts", "yarn")
ATTN_SCALES = ("none", "side", "area", "paper")

# Attention kernels (fitv2.model.attention); 'auto' picks one per batch.
ATTENTION_NAMES = ("auto", "sdpa", "sdpa-varlen", "flex", "flash-varlen", "torch-varlen")

# Classifier-free guidance: which channels, and how the scale varies with time.
GUIDED_CHANNELS = ("all", "reference")
GUIDANCE_SCHEDULES = ("constant", "power-cos")
# The SDE sampler's diffusion forms w(t) and last steps (the reference's --diffusion-form, --last-step).
SDE_DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Euler", "Tweedie", "None")
# Feature caches of the sampler (fitv2.sampling.cache).
CACHE_METHODS = ("none", "first-block")
# Solvers of the sampler itself; any other torchdiffeq method name is also accepted.
SOLVERS = ("euler", "heun", "dpm++2m", "unipc", "dopri5", "sde", "ddpm")
TORCHDIFFEQ_METHODS = (
    "dopri8",
    "dopri5",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
    "scipy_solver",
)


def rope_method(name: str) -> str:
    """The project's name of a RoPE extrapolation name or alias (lower case); unknown names pass through."""
    key = name.lower()
    return ROPE_ALIASES.get(key, key)
