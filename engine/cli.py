"""The ``thermocline`` command.

``thermocline validate POLICY.yaml`` checks a routing policy and prints its compiled rules (exit 0)
or every problem found (exit 1). Ray is imported only by the commands that run pipelines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from routers import Policy, PolicyError

__all__ = ["main"]


def _validate(args: argparse.Namespace) -> int:
    try:
        policy = Policy.from_yaml(args.policy)
    except PolicyError as exc:
        print(f"{args.policy}: invalid policy", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(policy.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``thermocline`` command."""
    parser = argparse.ArgumentParser(prog="thermocline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a routing policy file")
    validate.add_argument("policy", help="path to the policy YAML")
    validate.set_defaults(handler=_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thermocline`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
