"""`python -m k8s.validate`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
