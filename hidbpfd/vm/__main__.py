"""``python -m hidbpfd.vm [--] CMD...``: the same as ``hidbpfd vm``."""

import sys

from hidbpfd.vm.boot import main

sys.exit(main(sys.argv[1:]))
