"""The ``ddbcache`` command (also ``python -m ddbcache_hooks``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(operations=args.operations, items=args.items, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddbcache", description="Read-through Redis cache for DynamoDB: tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short workload on embedded DynamoDB and Redis")
    demo.add_argument("--operations", type=int, default=2000)
    demo.add_argument("--items", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
