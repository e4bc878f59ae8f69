"""longtail: distributed long-tail recommendation on Apache Spark (LLM-ESR)."""

__version__ = "0.1.0"
