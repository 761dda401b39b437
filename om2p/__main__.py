import sys

from om2p.cli import main

sys.exit(main())
