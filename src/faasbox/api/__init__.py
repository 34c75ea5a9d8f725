"""The HTTP/JSON API (APIServer). Thin: validation and shapes here, work in the services."""

from faasbox.api.app import create_app

__all__ = ["create_app"]
