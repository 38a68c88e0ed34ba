"""``python -m fitv2.cli``: the ``fitv2`` command (as torchrun runs it: ``torchrun ... -m fitv2.cli train``)."""

import sys

from . import main

sys.exit(main())
