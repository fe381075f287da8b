import sys

from hyperattn.cli import main

sys.exit(main())
