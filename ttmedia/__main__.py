import sys

from ttmedia.cli import main

sys.exit(main())
