"""``python -m phototag`` runs the command line."""

from phototag.cli import main

main()
