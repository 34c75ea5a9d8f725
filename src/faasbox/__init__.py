"""faasbox: a self-hosted serverless platform for Python functions and jobs."""

__version__ = "0.1.0"
