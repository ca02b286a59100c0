"""The routing API: ``POST /v1/route`` (per query) and ``POST /v1/recommend`` (per task)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from benchroute.errors import ConfigError
from benchroute.files import jsonable
from benchroute.server.deps import (
    RecommendBody,
    RouteBody,
    State,
    check_candidates,
    check_inputs,
    require_api_key,
    within_deadline,
)
from benchroute.server.errors import ApiError
from benchroute.server.state import AppState

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


async def _route(state: AppState, texts: list[str], candidates: list[str] | None) -> list[Any]:
    X = await state.embeddings.embed(texts, "routing" if len(texts) == 1 else "bulk")
    decisions: list[Any] = await run_in_threadpool(state.router.route, X, candidates)
    return decisions


@router.post("/route")
async def route(body: RouteBody, state: State) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise ApiError(422, "input is empty: give one query or a list of queries", param="input")
    check_inputs(texts, state.config)
    check_candidates(state.router, body.candidates)
    decisions = await within_deadline(state, _route(state, texts, body.candidates))
    for d in decisions:
        state.metrics.inc("benchroute_routed_total", endpoint="route", model=d.model)
    return {
        "object": "list",
        "data": [jsonable(asdict(d)) for d in decisions],  # the same objects as `benchroute route --json`
        "best_on_average": state.router.models_[int(state.router.best_on_average_)],
    }


async def _recommend(
    state: AppState, inputs: list[str], lab_texts: list[str], Y: np.ndarray, candidates: list[str] | None
) -> Any:
    X = await state.embeddings.embed(inputs + lab_texts, "bulk")
    n = len(inputs)
    lab = (X[n:], Y) if lab_texts else None
    return await run_in_threadpool(state.router.recommend, X[:n], lab, candidates)


@router.post("/recommend")
async def recommend(body: RecommendBody, state: State) -> dict[str, Any]:
    config = state.config
    check_inputs(body.inputs, config, "inputs")
    check_candidates(state.router, body.candidates)
    labeled = body.labeled or []
    if len(labeled) > config.limits.max_labeled:
        raise ApiError(
            413,
            f"{len(labeled)} labeled samples exceed the limit of {config.limits.max_labeled}",
            param="labeled",
        )
    lab_texts = [s.input for s in labeled]
    check_inputs(lab_texts, config, "labeled.input")
    try:  # the one validation of labeled samples, shared with the library and the CLI
        Y = state.router.labeled_matrix([s.correct for s in labeled])
    except ConfigError as exc:
        raise ApiError(422, str(exc), param="labeled") from None
    rec = await within_deadline(state, _recommend(state, list(body.inputs), lab_texts, Y, body.candidates))
    state.metrics.inc("benchroute_routed_total", endpoint="recommend", model=rec.chosen)
    out: dict[str, Any] = rec.to_dict()
    return out
