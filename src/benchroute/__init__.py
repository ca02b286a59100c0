"""benchroute: pick the right LLM for a job by learning from benchmark results."""

__version__ = "0.1.0"
