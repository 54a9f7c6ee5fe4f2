"""``python -m faceinfer`` runs the command line."""
import sys

from faceinfer.cli import main

sys.exit(main())
