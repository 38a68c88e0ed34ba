"""Run a parity fixture (numbers recorded from the reference implementation) through this code.

    python -m fitv2.parity DIR

DIR holds ``manifest.json``, the cases file and the weights files it names (the format of
``shared/fixtures/official_parity``). Each case is rebuilt from its recorded inputs with
this project's model, RoPE, loss, guidance and solvers; every output is compared
elementwise with ``|actual − expected| <= atol + rtol·|expected|``. One line per case, then
``N passed, M failed``; exit status 0 only when every case passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from .checkpoint import load_weights, read_state_dict
from .config import ModelConfig, Runtime
from .flow import TimeSampler, flow_loss
from .model.fit import FiT
from .model.rope import RopeScaling, attention_scale_factor, image_frequencies, rope_scaling, rope_tables, yarn_mscale
from .sampling import Guidance, SolverConfig, apply_guidance, integrate
from .tokens import TokenLayout

_QK_NORMS = {
    None: (None, False),
    "": (None, False),
    "none": (None, False),
    "layernorm": ("layernorm", False),
    "w_layernorm": ("layernorm", True),
    "rmsnorm": ("rmsnorm", False),
    "w_rmsnorm": ("rmsnorm", True),
}


# The published code's computation: padded rows kept, whole-row SDPA with the same-image mask.
EXACT = Runtime(attention="sdpa", unpad=False)


class Unsupported(Exception):
    """The fixture asks for something this runner does not model."""


def model_config_from_reference(ref: dict[str, Any]) -> ModelConfig:
    """This project's config for the reference constructor arguments."""
    if ref.get("rel_pos_embed", "rope") != "rope":
        raise Unsupported(f"rel_pos_embed={ref['rel_pos_embed']!r}")
    if (ref.get("norm_type") or "layernorm") != "layernorm":
        raise Unsupported(f"norm_type={ref['norm_type']!r}")
    adaln = {"lora": "lora", "normal": "full"}.get(ref.get("adaln_type", "normal"))
    if adaln is None:
        raise Unsupported(f"adaln_type={ref['adaln_type']!r}")
    q_norm, k_norm = ref.get("q_norm"), ref.get("k_norm")
    if q_norm != k_norm:
        raise Unsupported(f"different q_norm / k_norm ({q_norm!r}, {k_norm!r})")
    qk_norm, qk_weight = _QK_NORMS[q_norm]
    qk_weight = qk_weight or (qk_norm is not None and bool(ref.get("qk_norm_weight")))
    if not ref.get("use_swiglu", False):
        mlp = "gelu"
    else:
        mlp = "swiglu-large" if ref.get("use_swiglu_large") else "swiglu"
    return ModelConfig(
        name="reference",
        patch_size=ref["patch_size"],
        in_channels=ref["in_channels"],
        hidden_size=ref["hidden_size"],
        depth=ref["depth"],
        num_heads=ref["num_heads"],
        mlp_ratio=ref.get("mlp_ratio", 4.0),
        mlp=mlp,
        num_classes=ref["num_classes"],
        class_dropout_prob=ref.get("class_dropout_prob", 0.1),
        learn_sigma=ref.get("learn_sigma", False),
        qk_norm=qk_norm,
        qk_norm_weight=qk_weight,
        adaln=adaln,
        adaln_lora_dim=ref.get("adaln_lora_dim"),
        qkv_bias=ref.get("qkv_bias", True),
        ffn_bias=ref.get("ffn_bias", True),
        adaln_bias=ref.get("adaln_bias", True),
        rope_theta=ref.get("rope_theta", 10000.0),
        rope_on_v=ref.get("add_rel_pe_to_v", False),
        rope_train_len=ref.get("ori_max_pe_len") or 16,
        continuous_time=True,  # the reference clamps t to <= 1 for every model
        time_shifting=ref.get("time_shifting", 1),
    )


def rope_from_reference(ref: dict[str, Any]) -> RopeScaling:
    scaling = rope_scaling(ref.get("custom_freqs", "normal"), decouple=bool(ref.get("decouple", False)))
    h, w = ref.get("max_pe_len_h"), ref.get("max_pe_len_w")
    target = (int(h), int(w)) if h is not None and w is not None else None
    return scaling.with_(
        per_sample=bool(ref.get("online_rope", False)), target=target, train_len=ref.get("ori_max_pe_len")
    )


class Fixture:
    """A parity fixture folder: manifest, tensors and reference weights."""

    def __init__(self, directory: str | Path, runtime: Runtime | None = None):
        self.dir = Path(directory)
        self.runtime = EXACT if runtime is None else runtime
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self.tensors = load_file(str(self.dir / self.manifest["files"]["cases"]))
        self._states: dict[str, dict[str, Tensor]] = {}

    def model(self, name: str, overrides: dict[str, Any]) -> tuple[FiT, dict[str, Any]]:
        spec = self.manifest["models"][name]
        ref = {**spec["config"], **overrides}
        if name not in self._states:
            self._states[name] = read_state_dict(self.dir / spec["weights"])
        model = FiT(model_config_from_reference(ref), self.runtime)
        load_weights(model, self._states[name], source=spec["weights"])
        return model.eval(), ref

    def inputs(self, case: dict[str, Any]) -> dict[str, Tensor]:
        return {arg: self.tensors[key] for arg, key in case["inputs"].items()}


# ----------------------------------------------------------------------------- case runners


def _tokens_first(x: Tensor, ref: dict[str, Any]) -> Tensor:
    """Reference v1 models (use_sit=False) take and return (B, C, N); this code uses (B, N, C)."""
    return x if ref.get("use_sit", True) else x.transpose(1, 2)


def _reference_cfg(
    model: FiT,
    rope: RopeScaling,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    layout: TokenLayout,
    cfg_scale: float,
    scale_pow: float,
) -> Tensor:
    """The reference's doubled-batch guided forward, built from this project's pieces.

    Both halves see the first half of x; the guided features go to both halves, the rest of
    each half keeps its own (conditional / unconditional) prediction.
    """
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y, layout, rope=rope)
    cond, uncond = out.chunk(2)
    guidance = Guidance(
        scale=cfg_scale, channels="reference", schedule="constant" if scale_pow == 0 else "power-cos", power=scale_pow
    )
    n = guidance.guided_features(model.config.patch_size)
    guided = apply_guidance(cond, uncond, guidance.scale_at(t[: len(t) // 2]), n)
    return torch.cat([guided, torch.cat([guided[..., :n], uncond[..., n:]], dim=-1)])


def _layout(inputs: dict[str, Tensor]) -> TokenLayout:
    """The reference passes grid, mask and (not always) size as loose tensors; one layout from them."""
    grid = inputs["grid"]
    mask = inputs.get("mask")
    mask = torch.ones(grid.shape[0], grid.shape[2]) if mask is None else mask
    return TokenLayout.of(grid, mask, inputs.get("size"))


def run_forward(fx: Fixture, case: dict[str, Any]) -> dict[str, Tensor]:
    model, ref = fx.model(case["model"], case["constructor_overrides"])
    rope = rope_from_reference(ref)
    a = fx.inputs(case)
    x = _tokens_first(a["x"], ref)
    layout = _layout(a)
    if case["call"] == "forward_with_cfg":
        args = case["call_args"]
        out = _reference_cfg(model, rope, x, a["t"], a["y"], layout, args["cfg_scale"], args.get("scale_pow", 0.0))
    else:
        out = model(x, a["t"], a["y"], layout, rope=rope)
    results = {"out": _tokens_first(out, ref)}
    results.update(_rope_intermediates(model.config, rope, a["size"]))
    return results


def _rope_intermediates(cfg: ModelConfig, rope: RopeScaling, size: Tensor) -> dict[str, Tensor]:
    train_len = rope.train_len or cfg.rope_train_len
    freqs_h, freqs_w, _ = image_frequencies(size, cfg.head_dim, cfg.rope_theta, rope, train_len)
    out = {"rope_freqs_h": freqs_h[:, 0], "rope_freqs_w": freqs_w[:, 0]}
    if not rope.per_sample:
        out = {k: v[0] for k, v in out.items()}
        h, w = rope.target if rope.target else (int(size[..., 0].max()), int(size[..., 1].max()))
        th, tw = torch.tensor([h]), torch.tensor([w])
        out["rope_mscale"] = yarn_mscale(torch.maximum(th, tw), train_len)
        out["rope_proportion1"] = attention_scale_factor("side", th, tw, train_len)
        out["rope_proportion2"] = attention_scale_factor("area", th, tw, train_len)
    return out


def run_rope(fx: Fixture, case: dict[str, Any]) -> dict[str, Tensor]:
    model, ref = fx.model(case["model"], case["constructor_overrides"])
    rope = rope_from_reference(ref)
    a = fx.inputs(case)
    cfg = model.config
    cos, sin = rope_tables(_layout(a), cfg.head_dim, cfg.rope_theta, rope, cfg.rope_train_len)
    return {"freqs_cos": cos, "freqs_sin": sin}


def _time_from_draw(transport: dict[str, Any], u: Tensor) -> Tensor:
    kind = transport.get("snr_type", "uniform")
    if kind == "lognorm":
        return TimeSampler("logit-normal").from_normal(u)
    if kind == "uniform":
        return u
    raise Unsupported(f"snr_type={kind!r}")


def _check_transport(transport: dict[str, Any]) -> None:
    if transport.get("path_type", "Linear") != "Linear" or transport.get("prediction", "velocity") != "velocity":
        raise Unsupported(f"transport {transport}")
    if transport.get("train_eps") or transport.get("sample_eps"):
        raise Unsupported("train_eps / sample_eps other than 0")


def run_loss(fx: Fixture, case: dict[str, Any]) -> dict[str, Tensor]:
    model, ref = fx.model(case["model"], case["constructor_overrides"])
    args = case["call_args"]
    _check_transport(args["transport"])
    if args.get("model_mode", "eval") != "eval":
        raise Unsupported("loss in train mode (random label dropout)")
    a = fx.inputs(case)
    t = _time_from_draw(args["transport"], a["u"])
    x1, x0 = _tokens_first(a["x1"], ref), _tokens_first(a["x0"], ref)
    result = flow_loss(model, x1, a["y"], _layout(a), t=t, x0=x0, rope=rope_from_reference(ref))
    return {"t": t, "loss": result.per_image}


def run_ode(fx: Fixture, case: dict[str, Any]) -> dict[str, Tensor]:
    model, ref = fx.model(case["model"], case["constructor_overrides"])
    rope = rope_from_reference(ref)
    args = case["call_args"]
    _check_transport(args["transport"])
    if args.get("reverse"):
        raise Unsupported("reverse-time ODE")
    a = fx.inputs(case)
    z, y, layout = _tokens_first(a["z"], ref), a["y"], _layout(a)
    cfg_scale = args.get("cfg_scale")
    times: list[float] = []
    if cfg_scale is not None:
        null = torch.full_like(y, model.config.num_classes)
        y2 = torch.cat([y, null])
        layout2 = layout.repeat(2)
        z = torch.cat([z, z])

        def velocity(t: Tensor, x: Tensor) -> Tensor:
            times.append(float(t))
            tb = torch.ones(x.shape[0]) * t
            return _reference_cfg(model, rope, x, tb, y2, layout2, cfg_scale, args.get("scale_pow", 0.0))
    else:

        def velocity(t: Tensor, x: Tensor) -> Tensor:
            times.append(float(t))
            return model(x, torch.ones(x.shape[0]) * t, y, layout, rope=rope)

    solver = SolverConfig(
        solver=args.get("sampling_method", "dopri5"),
        steps=args["num_steps"] - 1,
        atol=args.get("atol", 1e-6),
        rtol=args.get("rtol", 1e-3),
    )
    samples = integrate(velocity, z, solver)
    return {"samples": _tokens_first(samples, ref), "times": torch.tensor(times)}


def _runner(call: str) -> Callable[[Fixture, dict[str, Any]], dict[str, Tensor]]:
    if call in ("forward", "forward_with_cfg"):
        return run_forward
    if "get_cached_2d_rope_from_grid" in call or "rope_from_grid" in call:
        return run_rope
    if "training_losses" in call:
        return run_loss
    if "sample_ode" in call:
        return run_ode
    raise Unsupported(f"call {call!r}")


# ----------------------------------------------------------------------------- comparison


def compare(actual: Tensor, expected: Tensor, atol: float, rtol: float) -> tuple[bool, float, float]:
    """(passed, largest |error|, largest error / its allowance)."""
    if actual.numel() != expected.numel():
        return False, float("inf"), float("inf")
    actual = actual.detach().reshape(expected.shape).to(expected.dtype)
    err = (actual - expected).abs()
    allowed = atol + rtol * expected.abs()
    worst = float((err / allowed).max()) if err.numel() else 0.0
    return bool((err <= allowed).all()), float(err.max()) if err.numel() else 0.0, worst


def run_fixture(
    directory: str | Path,
    only: str | None = None,
    echo: Callable[[str], None] = print,
    runtime: Runtime | None = None,
) -> tuple[int, int]:
    """Run every case (or those whose name contains ``only``); (passed, failed). ``runtime``: by default
    :data:`EXACT`, padded rows computed as padded rows with masked SDPA, the published code's order of
    operations, so that equal means bit for bit; ``Runtime()`` runs them as the model does by default
    (unpadded, per-image attention: equal up to float rounding)."""
    runtime = EXACT if runtime is None else runtime
    fx = Fixture(directory, runtime)
    torch.backends.cuda.matmul.allow_tf32 = False
    passed = failed = 0
    cases = [c for c in fx.manifest["cases"] if only is None or only in c["name"]]
    width = max((len(c["name"]) for c in cases), default=10)
    for case in cases:
        try:
            with torch.no_grad():
                actual = _runner(case["call"])(fx, case)
            lines, ok = [], True
            for out_name, key in case["outputs"].items():
                tol = case["tolerance"][out_name]
                if out_name not in actual:
                    ok = False
                    lines.append(f"{out_name}: not produced")
                    continue
                good, err, worst = compare(actual[out_name], fx.tensors[key], tol["atol"], tol["rtol"])
                ok &= good
                allowance = f"atol {tol['atol']:.0e} rtol {tol['rtol']:.0e}"
                lines.append(f"{out_name} {err:.2e} ({allowance}, {worst:.2f} of tol)")
            status = "PASS" if ok else "FAIL"
            detail = "; ".join(lines)
        except Unsupported as err:
            ok, status, detail = False, "FAIL", f"unsupported: {err}"
        except Exception as err:  # one broken case must not hide the others
            ok, status, detail = False, "FAIL", f"error: {type(err).__name__}: {err}"
        passed += ok
        failed += not ok
        echo(f"{status} {case['name']:<{width}}  {detail}")
    echo(f"{passed} passed, {failed} failed")
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fitv2.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="fixture folder with manifest.json")
    parser.add_argument("-k", dest="only", help="run only cases whose name contains this")
    parser.add_argument(
        "--unpad", action="store_true", help="run padded batches as the model does by default (equal up to rounding)"
    )
    args = parser.parse_args(argv)
    if not (Path(args.directory) / "manifest.json").is_file():
        print(f"error: {args.directory} has no manifest.json", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, failed = run_fixture(args.directory, args.only, runtime=Runtime() if args.unpad else EXACT)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
