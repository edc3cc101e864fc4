"""taskrouter: route a conversation to one task of a dynamic list, or none, with a constrained LLM."""
from .events import event_for
from .schema import RequestError, RouteAnswer, RouteRequest, parse_request

__version__ = "0.1.0"  # the one place the version is set (pyproject reads it)
__all__ = ["__version__", "Router", "load_model", "event_for", "parse_request", "RouteRequest", "RouteAnswer", "RequestError"]


def __getattr__(name: str):
    """Router and load_model import torch and transformers: load them only when asked."""
    if name == "Router":
        from .router import Router

        return Router
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(name)
