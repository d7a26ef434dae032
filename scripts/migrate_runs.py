"""Migrate run folders to portable run identities (hetpure.evaluation.migrate), recomputing no image.

    HETPURE_SHARED=../shared python scripts/migrate_runs.py docs/results/records [--map /old/prefix=/new/prefix]

Every folder under the given roots that holds a config.json is migrated; a table of old and new hashes and
the number of records rewritten is printed. Safe to rerun (migrated folders are reported as current).
"""

from __future__ import annotations

import argparse
import sys

from hetpure.errors import HetpureError
from hetpure.evaluation.migrate import migrate_tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="folders to search for run folders")
    parser.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                        help="where an old absolute path prefix is now (default: …/shared/… → $HETPURE_SHARED/…)")
    args = parser.parse_args()
    path_map = {}
    for item in args.map:
        if "=" not in item:
            print(f"migrate_runs: --map expects OLD=NEW, got {item!r}", file=sys.stderr)
            return 2
        old, new = item.split("=", 1)
        path_map[old] = new
    try:
        for root in args.roots:
            for r in migrate_tree(root, path_map):
                print(f"{r['status']:9s} {r['old_hash']} -> {r['new_hash']}  {r['records']:4d} records  {r['folder']}")
    except HetpureError as exc:
        print(f"migrate_runs: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
