"""``python -m fedtwin.cli``: the same as the ``fedtwin`` command."""

from fedtwin.cli.app import main

main()
