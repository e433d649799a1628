"""``python -m hidbpfd``."""

import sys

from hidbpfd.cli import main

sys.exit(main())
