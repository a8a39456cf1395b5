"""``python -m fedtwin.deploy.supernode_launcher --fleet-poll-interval S -- SUPERNODE-ARGS``.

Runs Flower 1.42's own SuperNode (``flwr.supernode.cli.flower_supernode``, the entry point of
``flower-supernode``) with every argument after ``--`` unchanged, after making its polls prompt
(:mod:`.flower_tuning`). Nothing else differs from ``flower-supernode``: same TLS, same
authentication, same Fleet API, same exit codes.
"""

from __future__ import annotations

import argparse
import sys

USAGE = "supernode_launcher --fleet-poll-interval S -- FLOWER-SUPERNODE-ARGS"


def main(argv: list[str] | None = None) -> int:
    """Tune this process's Flower, then hand over to Flower's SuperNode."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="fedtwin.deploy.supernode_launcher", usage=USAGE)
    parser.add_argument("--fleet-poll-interval", type=float, required=True)
    ours = parser.parse_args(args[:split])
    from fedtwin.deploy.flower_tuning import prompt_object_pulls, prompt_supernode_polls

    try:
        prompt_supernode_polls(ours.fleet_poll_interval)
    except ValueError as error:
        parser.error(str(error))
    prompt_object_pulls()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args[split + 1 :]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
