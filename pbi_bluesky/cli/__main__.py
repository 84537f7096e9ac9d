"""``python -m pbi_bluesky.cli``."""

from pbi_bluesky.cli import main

main()
