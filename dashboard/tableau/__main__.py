"""`python -m dashboard.tableau hyper|tds|twb` (see the package's docstring)."""

import sys

from dashboard.tableau import main

sys.exit(main())
