"""``fitv2 serve``: the web page of a checkpoint (gradio, the ``fitv2[web]`` extra)."""

from __future__ import annotations

import argparse

from .flags import given
from .options import (
    ServeOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = ServeOptions.from_dict(given(args, ServeOptions))
    opts.check_environment()
    from .page import serve

    serve(opts)
    return 0
