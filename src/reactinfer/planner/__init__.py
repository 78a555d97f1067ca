"""The ReAct planner: reason → act → observe, to the fastest model within a quality bound."""
from .actions import Action, Candidate
from .api import optimize

__all__ = ["Action", "Candidate", "optimize"]
