"""stepline: an Open Responses server that runs the whole agent loop, stored step by step."""

__version__ = "0.1.0"
