"""Command line: ``relprop demo`` runs the end-to-end example."""
from __future__ import annotations

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="relprop", description="relprop: compiled-kernel relevance engine")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train a small MLP on sklearn digits and explain it")
    d.add_argument("--out", default="relprop-demo", help="folder for the saved attributions")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo

        demo(args.out)


if __name__ == "__main__":
    main()
