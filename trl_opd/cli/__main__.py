"""``python -m trl_opd.cli``: the same as the ``trl-opd`` console script."""

import sys

from . import main


sys.exit(main())
