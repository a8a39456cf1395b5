"""``python -m fedtwin.cli``: the same as the ``fedtwin`` command."""

from fedtwin.cli.app import main

# Guarded: worker processes started with "spawn" import the main module again.
if __name__ == "__main__":
    main()
