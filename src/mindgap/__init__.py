"""mindgap: close the gap between fine-tuning data and the model's own distribution."""

__version__ = "0.1.0"
