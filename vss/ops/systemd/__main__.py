import sys

from vss.ops.systemd import main

sys.exit(main())
