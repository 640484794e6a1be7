"""rtml: real-time machine learning on market ticks with incremental re-training."""

__version__ = "0.1.0"
