"""The public estimator: ``Router().fit(benchmark)``, then ``recommend`` / ``route``; results and
persistence (save / load / manifest / card)."""

from benchroute.method.perquery import SessionState
from benchroute.router.estimator import ModelScore, Recommendation, RouteDecision, Router

__all__ = ["ModelScore", "Recommendation", "RouteDecision", "Router", "SessionState"]
