"""``python -m localize`` (and ``accelerate launch -m localize discover ...``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
