"""``python -m piton``: the ``piton`` command."""

from piton.cli import main

main()
