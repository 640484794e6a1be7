"""`python -m rtml_cli` runs the command-line interface."""

from rtml_cli.cli import main

main()
