"""``python -m compass.cli``."""

from compass.cli import main

main()
