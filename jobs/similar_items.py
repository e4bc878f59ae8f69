"""spark-submit entry point: `spark-submit jobs/similar_items.py [--conf FILE] [--set KEY=VALUE ...] [OPTIONS]`."""
import sys

from longtail.cli import main

if __name__ == "__main__":
    sys.exit(main(["similar-items", *sys.argv[1:]]))
