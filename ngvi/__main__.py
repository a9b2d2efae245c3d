import sys

from ngvi.cli import main

sys.exit(main())
