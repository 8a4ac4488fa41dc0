"""``python -m unflow_zoo.pretrained --markdown``: print the README's table of published flows."""

from __future__ import annotations

import argparse

from unflow_zoo.pretrained.registry import list_pretrained, markdown_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unflow_zoo.pretrained", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the markdown table of names and metrics")
    args = parser.parse_args(argv)
    print(markdown_table() if args.markdown else "\n".join(list_pretrained()))


if __name__ == "__main__":
    main()
