import sys

from progrl.cli import main

sys.exit(main())
