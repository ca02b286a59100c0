"""What the Router returns: a task-level :class:`Recommendation` (with a :class:`ModelScore` per model)
and per-query :class:`RouteDecision` s. Plain dataclasses with stable JSON (docs/json-output.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchroute.files import jsonable


@dataclass
class ModelScore:
    """One row of a recommendation: a candidate LLM and everything the router believes about it."""

    model: str
    rank: int
    s1: float
    s2: float
    s3: float
    p: float
    predicted_accuracy: float
    params_b: float | None
    cost: float | None


@dataclass
class Recommendation:
    """A task-level routing decision and its explanation (stable JSON via :meth:`to_dict`)."""

    chosen: str
    candidate: str
    best_on_average: str
    fell_back: bool
    probability: float | None
    eta: float
    reason: str
    score: str
    n_inputs: int
    n_labeled: int
    distance: float
    distance_percentile: float
    closeness: str
    nearest_tasks: list[dict[str, Any]]
    ranking: list[ModelScore]
    few_shot: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ranking"] = [asdict(r) for r in self.ranking]
        return jsonable(out)


@dataclass
class RouteDecision:
    """Per-query routing: the model with the highest predicted correctness (ties to the BMA model)."""

    input_index: int
    model: str
    probability: float
    reason: str
    per_model: dict[str, float]


def closeness(percentile: float) -> str:
    """How far a new task is from the benchmark tasks, in words, from its distance percentile."""
    if percentile <= 25:
        return "close to the benchmarks: nearer than most benchmark tasks are to each other"
    if percentile <= 75:
        return "about as far from the benchmarks as a typical benchmark task is from the others"
    if percentile <= 100:
        return "far from the benchmarks: the predictors are less reliable here"
    return "farther from the benchmarks than any benchmark task: expect the fallback"


__all__ = ["ModelScore", "Recommendation", "RouteDecision", "closeness"]
