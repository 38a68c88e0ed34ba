"""Names the command line and the library both accept, torch-free so that ``fitv2 --help`` stays fast."""

from __future__ import annotations

# Names accepted by --rope (tests check this equals fitv2.model.rope.NAMED_SCALINGS).
ROPE_NAMES = (
    "none",
    "pi",
    "ntk",
    "ntk-by-parts",
    "yarn",
    "vision-ntk",
    "vision-ntk-by-parts",
    "vision-yarn",
    "vision-ntk+attn-scale",
    "normal",
    "no",
    "linear",
    "ntk-aware",
    "dynntk",
    "partntk",
    "ntk-aware-pro1",
    "ntkpro1",
    "ntk-aware-pro2",
    "ntkpro2",
)
ATTN_SCALES = ("none", "side", "area", "paper")
SDE_DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Euler", "Tweedie", "None")
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
