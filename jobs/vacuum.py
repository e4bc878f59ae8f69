"""spark-submit entry point: `spark-submit jobs/vacuum.py [--conf FILE] [--set KEY=VALUE ...] [OPTIONS]`."""
import sys

from longtail.cli import main

if __name__ == "__main__":
    sys.exit(main(["vacuum", *sys.argv[1:]]))
