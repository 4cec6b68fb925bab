"""gaplab: measure LLM inference runtimes and explain the gaps between them."""

__version__ = "0.1.0"
