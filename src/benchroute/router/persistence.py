"""Saving and loading a Router: router.json (the manifest, checksummed and schema-checked) +
arrays.safetensors + card.md, written atomically as one directory. No pickle: a router from an
untrusted source is data, never code."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchroute import __version__
from benchroute.errors import ConfigError, IntegrityError
from benchroute.files import atomic_write_dir, jsonable, read_bytes
from benchroute.method.folds import ConfidencePairs
from benchroute.method.labels import compact_labels, is_binary, pack_bits, unpack_bits
from benchroute.method.neighbors import BACKENDS, INDEX_PARAMS
from benchroute.method.perquery import PerQueryKnobs, SessionKnobs, fit_stats
from benchroute.method.predictors import KNNCorrectness, MLPCorrectness
from benchroute.method.scores import LABEL_GRID, LABEL_RULES, BlendChoice

if TYPE_CHECKING:
    from benchroute.router.estimator import Router

FORMAT_VERSION = 2  # 2: labels bit-packed (Y_bits), index / index_params; 1 still loads
READABLE_VERSIONS = (1, 2)


def params_json(router: Router) -> dict[str, Any]:
    """The router's constructor parameters as JSON values (a predictor instance by its name)."""
    pred = router.predictor if isinstance(router.predictor, str) else _predictor_name(router.predictor)
    params = {**router.get_params(deep=False), "predictor": pred}
    for key in ("alphas", "blend_ks", "blend_lambdas"):
        params[key] = list(params[key])
    if params["index_params"] is not None:
        params["index_params"] = jsonable(dict(params["index_params"]))
    return params


def save_router(
    router: Router, path: str | os.PathLike[str], card_extra: dict[str, Any] | None = None
) -> Path:
    """Write router.json + arrays.safetensors + card.md into ``path`` (atomically, no pickle)."""
    from safetensors.numpy import save as st_save

    router._check_fitted()
    path = Path(path)
    arrays = {
        "X": router.X_.astype(np.float32),
        # 0/1 correctness bit-packed (1/32 of float32); fractional labels (add_model fills) stay float32
        **({"Y_bits": pack_bits(router.Y_)} if is_binary(router.Y_) else {"Y": router.Y_.astype(np.float32)}),
        "task_index": router.task_index_.astype(np.int32),
        "task_accuracy": router.task_accuracy_.astype(np.float64),
        "params_b": router.params_b_.astype(np.float64),
        "cost": router.cost_.astype(np.float64),
        "pairs_u": router.pairs_.u.astype(np.float64),
        "pairs_p": router.pairs_.p.astype(np.float64),
        "pairs_task": router.pairs_.task.astype(np.int32),
        "pairs_alpha": router.pairs_.alpha.astype(np.float64),
        "pairs_repeat": router.pairs_.repeat.astype(np.int32),
        "atc_conf": router.pairs_.atc_conf.astype(np.float32),
        "atc_correct": router.pairs_.atc_correct.astype(np.uint8),
        **(
            {"perquery_tightness": router.perquery_.tightness.astype(np.float64)}
            if router.perquery_.tightness is not None
            else {}
        ),
    }
    if isinstance(router.predictor_, MLPCorrectness):
        for key, val in router.predictor_.net_.state_dict().items():
            arrays[f"mlp.{key}"] = val.numpy()
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    card = model_card(router, card_extra).encode("utf-8")
    payload = {
        "format": "benchroute-router",
        "format_version": FORMAT_VERSION,
        "benchroute_version": __version__,
        "params": params_json(router),
        "tasks": router.tasks_,
        "models": router.models_,
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
        "card_sha256": hashlib.sha256(card).hexdigest(),
        "card_extra": jsonable(card_extra or {}),
        "blend": jsonable(vars(router.blend_)) if hasattr(router, "blend_") else None,
        "label_rules": {str(k): v for k, v in router.label_rules_.items()}
        if hasattr(router, "label_rules_")
        else None,
        "cost_unit": router.cost_unit_,
        "perquery": {"knobs": asdict(router.perquery_.knobs), "session": asdict(router.perquery_.session)},
        "predictor_params": (
            None if isinstance(router.predictor, str) else jsonable(router.predictor.get_params(deep=False))
        ),
    }
    text = json.dumps(payload, sort_keys=True)
    doc = {"payload": payload, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    # all three files change together (one directory swap), so a kill or a full disk mid-save
    # leaves the previous router whole; raises ConfigError if path is a file or holds other files
    atomic_write_dir(
        path,
        {
            "arrays.safetensors": blob,
            "card.md": card,
            "router.json": (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"),
        },
    )
    return path


def load_router(path: str | os.PathLike[str], cls: type[Router]) -> Router:
    """Load a saved router, verifying format version and checksums (never executes code)."""
    from safetensors.numpy import load as st_load

    path = Path(path)
    manifest = path / "router.json"
    if not os.path.lexists(manifest):
        raise IntegrityError(
            f"{manifest}: no saved router here", "pass a directory written by `benchroute fit`"
        )
    # bounded: a regular file within the manifest cap (a FIFO or /dev/zero is refused unread)
    raw = read_bytes(manifest, "manifest", IntegrityError)
    try:
        doc = json.loads(raw.decode("utf-8"))
        payload = doc["payload"]
        ok = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest() == doc["sha256"]
    except RecursionError:
        raise IntegrityError(f"{manifest}: JSON nested too deeply", "re-save the router") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"{manifest}: not a valid router manifest ({exc})", "re-save the router"
        ) from exc
    if not ok:
        raise IntegrityError(
            f"{manifest}: checksum mismatch (file corrupt or modified)", "re-save the router"
        )
    if (
        not isinstance(payload, dict)
        or payload.get("format") != "benchroute-router"
        or payload.get("format_version") not in READABLE_VERSIONS
    ):
        version = payload.get("format_version") if isinstance(payload, dict) else None
        raise IntegrityError(
            f"{manifest}: unsupported router format {version}",
            f"this benchroute reads formats {READABLE_VERSIONS}: upgrade it, or re-save the router",
        )
    if payload["format_version"] == 1 and isinstance(payload.get("params"), dict):
        # format 1 predates the index choice: those routers searched with the defaults
        payload["params"] = {"index": "auto", "index_params": None, **payload["params"]}
    _check_manifest(payload, manifest, cls)
    if not os.path.lexists(path / "arrays.safetensors"):
        raise IntegrityError(f"{path / 'arrays.safetensors'}: missing", "re-save the router")
    blob = read_bytes(path / "arrays.safetensors", "arrays", IntegrityError)
    if "card_sha256" in payload:  # routers saved before the card was checksummed lack it
        card = path / "card.md"
        if not os.path.lexists(card) or (
            hashlib.sha256(read_bytes(card, "manifest", IntegrityError)).hexdigest() != payload["card_sha256"]
        ):
            raise IntegrityError(f"{card}: missing or modified (checksum mismatch)", "re-save the router")
    if hashlib.sha256(blob).hexdigest() != payload["arrays_sha256"]:
        raise IntegrityError(f"{path / 'arrays.safetensors'}: checksum mismatch (corrupt or truncated)")
    try:
        arrays = st_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError on anything unparsable
        raise IntegrityError(
            f"{path / 'arrays.safetensors'}: not a safetensors file ({exc})", "re-save the router"
        ) from exc
    _check_arrays(arrays, payload, path / "arrays.safetensors")
    try:
        return _from_saved(cls, payload, arrays)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, ConfigError) as exc:
        raise IntegrityError(
            f"{manifest}: inconsistent saved router ({type(exc).__name__}: {exc})", "re-save the router"
        ) from exc


def _from_saved(cls: type[Router], payload: dict[str, Any], arrays: dict[str, np.ndarray]) -> Router:
    params = dict(payload["params"])
    custom = payload.get("predictor_params")
    if custom is not None:
        from benchroute.method.predictors import PREDICTORS

        if "hidden" in custom:
            custom["hidden"] = tuple(custom["hidden"])
        params["predictor"] = PREDICTORS[params["predictor"]](**custom)
    for key in ("alphas", "blend_ks", "blend_lambdas"):  # JSON lists back to the constructor's tuples
        params[key] = tuple(params[key])
    router = cls(**params)
    router._check_params()
    router.tasks_ = list(payload["tasks"])
    router.models_ = list(payload["models"])
    router.X_ = arrays["X"]
    router.Y_ = (
        unpack_bits(arrays["Y_bits"], len(router.models_))
        if "Y_bits" in arrays
        else compact_labels(arrays["Y"])
    )
    router.task_index_ = arrays["task_index"]
    router.task_accuracy_ = arrays["task_accuracy"]
    router.params_b_ = arrays["params_b"]
    router.cost_ = arrays["cost"]
    router.cost_unit_ = payload.get("cost_unit", "usd_per_mtok")
    pairs = ConfidencePairs(
        arrays["pairs_u"],
        arrays["pairs_p"],
        arrays["pairs_task"],
        arrays["pairs_alpha"],
        arrays["pairs_repeat"],
        arrays["atc_conf"].astype(np.float64),
        arrays["atc_correct"].astype(bool),
    )
    predictor = router._make_predictor()
    if isinstance(predictor, MLPCorrectness):
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("mlp.")}
        predictor = predictor.load_state(state, router.X_.shape[1], len(router.models_))
    else:
        predictor = predictor.fit(router.X_, router.Y_)
    router.predictor_ = predictor
    router._fit_confidence(pairs)
    pq = payload.get("perquery") or {}  # routers saved before per-query knobs route with the defaults
    router.perquery_ = fit_stats(
        router.Y_,
        router.task_index_,
        PerQueryKnobs(**pq.get("knobs", {})),
        SessionKnobs(**pq.get("session", {})),
        n_tasks=len(router.tasks_),
    )
    router.perquery_.tightness = arrays.get("perquery_tightness")
    if payload.get("blend") is not None:
        router.blend_ = BlendChoice(**payload["blend"])
        # routers saved before label rules existed keep the blend's choice whatever the labels say
        router.label_rules_ = {int(k): v for k, v in (payload.get("label_rules") or {}).items()}
    return router


def _index_card_line(router: Router) -> list[str]:
    index = getattr(router.predictor_, "index_", None)
    if index is None:
        return []
    where = f"index={router.index!r}, index_params={router.index_params}"
    line = f"- neighbour index: {jsonable(index.describe())} ({where})"
    return [line]


def _blend_card_lines(router: Router) -> list[str]:
    if not hasattr(router, "blend_"):
        return []
    b = router.blend_
    rules = ", ".join(f"{s} labels: {r}" for s, r in sorted(getattr(router, "label_rules_", {}).items()))
    return [
        (
            f"- blend: k={b.k}, lambda={b.lam:g} (leave-one-task-out accuracy {b.inner_accuracy:.4f} vs "
            f"{b.bma_inner_accuracy:.4f} for the best model on average)"
        ),
        f"- label rules (how a few labels may overrule the blend): {rules or 'none saved'}",
    ]


def model_card(router: Router, extra: dict[str, Any] | None = None) -> str:
    """A Markdown summary of what the router was trained on and how (saved as card.md)."""
    router._check_fitted()
    bma = router.models_[router.best_on_average_]
    lines = [
        "# benchroute router card",
        "",
        f"- benchroute {__version__}, format version {FORMAT_VERSION}",
        f"- embedding model: `{router.embedding_model}` ({router.X_.shape[1]}-d)",
        f"- predictor: `{params_json(router)['predictor']}` (k={router.k}), score {router.score}, "
        f"t={router.t}",
        *_index_card_line(router),
        (
            f"- confidence: {router.p_estimator} (sigma={router.sigma}, kappa={router.kappa}), "
            f"{len(router.pairs_.u)} (u, p) pairs, u in [{router.pairs_.u.min():.3f}, "
            f"{router.pairs_.u.max():.3f}], "
            f"p in [{router.pairs_.p.min():.3f}, {router.pairs_.p.max():.3f}]"
        ),
        f"- trust rule: eta={router.eta}, {router.draws} Monte Carlo draws, seed {router.seed}",
        *_blend_card_lines(router),
        f"- best model on average: `{bma}` (macro accuracy {router.task_accuracy_.mean(axis=0).max():.4f})",
        f"- {len(router.tasks_)} training tasks, {len(router.X_)} questions, {len(router.models_)} models",
        "",
        "## Tasks",
        "",
        ", ".join(f"`{t}`" for t in router.tasks_),
        "",
        "## Models",
        "",
        ", ".join(f"`{m}`" for m in router.models_),
    ]
    for key, val in (extra or {}).items():
        lines += ["", f"## {key}", "", "```", json.dumps(jsonable(val), indent=1), "```"]
    return "\n".join(lines) + "\n"


_MANIFEST_KEYS: dict[str, Any] = {  # key -> accepted JSON type(s); all required except _OPTIONAL_KEYS
    "format": str,
    "format_version": int,
    "benchroute_version": str,
    "params": dict,
    "tasks": list,
    "models": list,
    "arrays_sha256": str,
    "card_sha256": str,
    "card_extra": dict,
    "blend": (dict, type(None)),
    "predictor_params": (dict, type(None)),
    "cost_unit": (str, type(None)),
    "label_rules": (dict, type(None)),
    "perquery": dict,
}
_OPTIONAL_KEYS = {"cost_unit", "label_rules", "perquery", "card_sha256"}
_BLEND_FIELDS = {"k", "lam", "inner_accuracy", "bma_inner_accuracy", "gain_se", "gated"}
#: predictor_params a manifest may carry, each with its check (type and range): an MLP with
#: hidden=[10**9] would exhaust memory, a string k would crash the first query.
_PREDICTOR_PARAMS: dict[str, dict[str, Any]] = {
    "knn": {
        "k": lambda v: _int_in(v, 1, 10**6),
        "weights": lambda v: v in ("uniform", "distance"),
        "backend": lambda v: v in BACKENDS,
        "index_params": lambda v: v is None or isinstance(v, dict),
        "labels": lambda v: isinstance(v, str),
    },
    "mlp": {
        "hidden": lambda v: isinstance(v, list) and 0 < len(v) <= 8 and all(_int_in(h, 1, 8192) for h in v),
        "lr": lambda v: _finite_number(v) and 0 < v < 10,
        "epochs": lambda v: _int_in(v, 1, 10**5),
        "patience": lambda v: _int_in(v, 1, 10**5),
        "batch_size": lambda v: _int_in(v, 1, 10**6),
        "val_fraction": lambda v: _finite_number(v) and 0 <= v < 1,
        "random_state": lambda v: _int_in(v, 0, 2**32 - 1),
    },
}


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check_blend(blend: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's ``blend`` (None: nothing)."""
    if set(blend) - _BLEND_FIELDS or not {"k", "lam", "inner_accuracy", "bma_inner_accuracy"} <= set(blend):
        return f"blend must have the fields {sorted(_BLEND_FIELDS)}"
    if not _int_in(blend["k"], 1, 10**6):
        return f"blend.k = {blend['k']!r} is not a positive integer"
    if not (_finite_number(blend["lam"]) and 0 <= blend["lam"] <= 1):
        return f"blend.lam = {blend['lam']!r} is not a number in [0, 1]"
    for key in ("inner_accuracy", "bma_inner_accuracy", "gain_se"):
        if blend.get(key) is not None and not _finite_number(blend[key]):
            return f"blend.{key} = {blend[key]!r} is not a number"
    if not isinstance(blend.get("gated", False), bool):
        return "blend.gated must be true or false"
    return None


_POSITIVE_INTS = {"k": 10**6, "kappa": 10**6, "repeats": 10**6, "cap": 10**9, "draws": 10**7}


def _check_manifest(payload: dict[str, Any], manifest: Path, cls: type[Router]) -> None:
    """The manifest's schema: a re-signed router.json with unknown keys or wrong types is refused.

    The checksums only detect accidents; anyone can re-sign an edited manifest, so every field is
    checked here before it reaches a constructor (a router from an untrusted source is data).
    """

    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{manifest}: {what}", "re-save the router, or get it from its author")

    keys = set(payload)
    unexpected, missing = keys - set(_MANIFEST_KEYS), set(_MANIFEST_KEYS) - _OPTIONAL_KEYS - keys
    if unexpected or missing:
        raise bad(f"unexpected manifest keys {sorted(unexpected)}, missing {sorted(missing)}")
    for key in keys:
        if not isinstance(payload[key], _MANIFEST_KEYS[key]) or isinstance(payload[key], bool):
            raise bad(f"{key} has the wrong type ({type(payload[key]).__name__})")
    for key in ("tasks", "models"):
        names = payload[key]
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise bad(f"{key} must be a non-empty list of distinct strings")
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    params = payload["params"]
    if set(params) != set(defaults):
        raise bad(f"unexpected router parameters {sorted(set(params) ^ set(defaults))}")
    for key, value in params.items():
        default = defaults[key]
        if key == "index":
            ok = value in BACKENDS
        elif key == "index_params":
            ok = value is None or (
                isinstance(value, dict)
                and all(
                    k in INDEX_PARAMS and k != "backend" and (v is None or isinstance(v, int | float | str))
                    for k, v in value.items()
                )
            )
        elif isinstance(default, bool):
            ok = _of_kind(value, default)
        elif isinstance(default, int):
            ok = _of_kind(value, default) and (key not in _POSITIVE_INTS or 1 <= value <= _POSITIVE_INTS[key])
        elif isinstance(default, float):
            ok = (
                _of_kind(value, default)
                and (key != "sigma" or value > 0)
                and (key not in ("t", "eta") or 0 <= value <= 1)
            )
        elif isinstance(default, tuple | list):
            ok = isinstance(value, list) and len(value) > 0 and all(_finite_number(v) for v in value)
        else:  # predictor, score, p_estimator, embedding_model: names
            ok = isinstance(value, str) and value != ""
        if not ok:
            raise bad(f"router parameter {key} = {value!r} is not valid")
    if payload["params"]["embedding_model"] in ("", ".", ".."):
        raise bad("embedding_model is not valid")
    pq = payload.get("perquery", {})
    if set(pq) - {"knobs", "session"} or not all(
        _valid_knobs(pq.get(key, {}), cls_)
        for key, cls_ in (("knobs", PerQueryKnobs), ("session", SessionKnobs))
    ):
        raise bad(f"perquery must hold valid knobs and session knobs, got {pq!r}")
    rules = payload.get("label_rules") or {}
    if not all(k.isdigit() and int(k) in LABEL_GRID and v in LABEL_RULES for k, v in rules.items()):
        raise bad(f"label_rules must map sizes {LABEL_GRID} to rules {LABEL_RULES}")
    if payload.get("blend") is not None and (problem := _check_blend(payload["blend"])):
        raise bad(problem)
    if not all(isinstance(v, str) for v in (payload.get("card_sha256", ""), payload.get("cost_unit") or "")):
        raise bad("card_sha256 and cost_unit must be strings")
    predictor = params["predictor"]
    custom = payload.get("predictor_params")
    if custom is not None:
        checks = _PREDICTOR_PARAMS.get(predictor)
        if checks is None:
            raise bad(f"predictor_params are not allowed for predictor {predictor!r}")
        wrong = [k for k, v in custom.items() if k not in checks or not checks[k](v)]
        if wrong:
            raise bad(f"predictor_params {wrong[0]} = {custom.get(wrong[0])!r} is not valid")


def _valid_knobs(values: Any, cls: type) -> bool:
    """A JSON object whose fields are those of the knobs dataclass ``cls``, each of its default's type
    (bool, int, or a finite number for a float) and accepted by its range checks."""
    defaults = {f.name: f.default for f in fields(cls)}
    if not isinstance(values, dict) or set(values) - set(defaults):
        return False
    for key, value in values.items():
        default = defaults[key]
        int_kind = isinstance(default, int) and not isinstance(default, bool)
        if not _of_kind(value, default) or (int_kind and not 0 < value <= 10**6):
            return False
    try:
        cls(**values)
    except ConfigError:
        return False
    return True


def _of_kind(value: Any, default: Any) -> bool:
    """``value`` is a JSON value of ``default``'s kind: a bool, an int (not a bool), or a finite number
    for a float."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return _finite_number(value)


def _finite_number(v: Any) -> bool:
    """A JSON number usable as a float parameter (no bool, no NaN, no 10**400 that overflows a float)."""
    return (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and abs(v) < 1e300
        and bool(np.isfinite(float(v)))
    )


def _check_arrays(arrays: dict[str, np.ndarray], payload: dict[str, Any], file: Path) -> None:
    """Names, shapes and dtypes of the saved arrays agree with each other and with the manifest."""
    m, t = len(payload["models"]), len(payload["tasks"])
    X = arrays.get("X")
    if X is None or X.ndim != 2 or len(X) == 0 or X.dtype != np.float32 or not np.isfinite(X).all():
        raise IntegrityError(f"{file}: X must be a non-empty finite n x d float32 array")
    n = len(X)
    z = len(arrays.get("pairs_u", ()))
    _check_labels(arrays, n, m, payload["format_version"], file)
    shapes = {
        "task_index": (n,),
        "task_accuracy": (t, m),
        "params_b": (m,),
        "cost": (m,),
        "pairs_u": (z,),
        "pairs_p": (z, m),
        "pairs_task": (z,),
        "pairs_alpha": (z,),
        "pairs_repeat": (z,),
    }
    for name, shape in shapes.items():
        if name not in arrays or arrays[name].shape != shape:
            got = arrays[name].shape if name in arrays else "missing"
            raise IntegrityError(f"{file}: array {name} has shape {got}, expected {shape}")
    if (
        "atc_conf" not in arrays
        or "atc_correct" not in arrays
        or arrays["atc_conf"].shape != arrays["atc_correct"].shape
    ):
        raise IntegrityError(f"{file}: atc_conf and atc_correct are missing or differ in shape")
    ti = arrays["task_index"]
    if not np.issubdtype(ti.dtype, np.integer) or (len(ti) and (ti.min() < 0 or ti.max() >= t)):
        raise IntegrityError(f"{file}: task_index must index the {t} tasks")
    tight = arrays.get("perquery_tightness")
    if tight is not None and (tight.shape != (t,) or not np.isfinite(tight).all()):
        raise IntegrityError(f"{file}: perquery_tightness must hold {t} finite values")
    unknown = (
        set(arrays) - set(shapes) - {"X", "Y", "Y_bits", "atc_conf", "atc_correct", "perquery_tightness"}
    )
    mlp = any(k.startswith("mlp.") for k in arrays)
    if mlp != (payload["params"]["predictor"] == "mlp"):
        raise IntegrityError(
            f"{file}: the arrays {'hold' if mlp else 'lack'} MLP weights but the manifest's predictor is "
            f"{payload['params']['predictor']!r}",
            "re-save the router",
        )
    if any(not k.startswith("mlp.") for k in unknown):
        raise IntegrityError(
            f"{file}: unexpected arrays {sorted(k for k in unknown if not k.startswith('mlp.'))}"
        )


def _check_labels(arrays: dict[str, np.ndarray], n: int, m: int, version: int, file: Path) -> None:
    """Exactly one label array: Y_bits (n x ceil(m/8) uint8, zero padding), or Y (uint8 0/1 in format 1,
    float32 in [0, 1] for fractional labels in format 2)."""
    if ("Y" in arrays) == ("Y_bits" in arrays) or (version == 1 and "Y" not in arrays):
        raise IntegrityError(
            f"{file}: expected exactly one label array ({'Y' if version == 1 else 'Y_bits or Y'})"
        )
    if "Y_bits" in arrays:
        bits = arrays["Y_bits"]
        if bits.dtype != np.uint8 or bits.shape != (n, -(-m // 8)):
            raise IntegrityError(
                f"{file}: array Y_bits has {bits.dtype} shape {bits.shape}, expected uint8 {(n, -(-m // 8))}"
            )
        if m % 8 and (bits[:, -1] & ((1 << (8 - m % 8)) - 1)).any():
            raise IntegrityError(
                f"{file}: Y_bits has bits set past the {m} models (not written by benchroute)"
            )
        return
    Y = arrays["Y"]
    if Y.shape != (n, m):
        raise IntegrityError(f"{file}: array Y has shape {Y.shape}, expected {(n, m)}")
    if Y.dtype == np.uint8 or version == 1:
        if not np.isin(Y, (0, 1)).all():
            raise IntegrityError(f"{file}: Y must hold 0/1 correctness")
    elif Y.dtype != np.float32 or not (np.isfinite(Y).all() and (Y >= 0).all() and (Y <= 1).all()):
        raise IntegrityError(f"{file}: Y must be uint8 0/1 or float32 in [0, 1]")


def _predictor_name(est: Any) -> str:
    for name, cls in (("knn", KNNCorrectness), ("mlp", MLPCorrectness)):
        if type(est) is cls:
            return name
    raise ConfigError(
        f"cannot save a router with a custom predictor {type(est).__name__}",
        "use predictor='knn', 'mlp' or 'logreg' to save it",
    )


__all__ = ["FORMAT_VERSION", "load_router", "model_card", "params_json", "save_router"]
