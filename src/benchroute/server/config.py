"""serve.yaml: the configuration of ``benchroute serve``, validated on start with errors naming the field.

Two steps, because the file alone cannot say whether a model name is right:

* :func:`load_config` parses the YAML and checks everything the file can check by itself: unknown
  keys, URLs, numbers, that every named environment variable is set and every key file readable.
  Secrets (client API keys, upstream API keys) are read here, once, and kept as ``SecretStr`` so
  they never appear in a repr, a log line or an error message.
* :func:`resolve_config` checks the file against the loaded router (unknown model, a profile whose
  candidate set is empty, the fallback) and precomputes what each request needs.

Every problem is a :class:`~benchroute.errors.ConfigError` whose message starts with the field,
e.g. ``serve.yaml: models.gpt-4o.base_url: ...``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator

from benchroute.errors import ConfigError

DEFAULT_KEYS_ENV = "BENCHROUTE_API_KEYS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class UpstreamModel(_Strict):
    """One LLM endpoint: an OpenAI-compatible ``base_url`` (ending in /v1 or wherever
    ``/chat/completions`` lives), the model name the upstream expects, and the environment variable
    holding its API key (omit it for an endpoint without auth)."""

    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    passthrough: bool = False
    usd_per_mtok_in: float | None = Field(default=None, ge=0)
    usd_per_mtok_out: float | None = Field(default=None, ge=0)

    _api_key: SecretStr | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8001/v1)")
        if parts.query or parts.fragment:
            raise ValueError(f"{v!r}: a base URL takes no query string or fragment")
        try:
            _ = parts.port  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r}: bad port ({exc})") from None
        return v.strip().rstrip("/")

    @property
    def api_key(self) -> str | None:
        return None if self._api_key is None else self._api_key.get_secret_value()


class Profile(_Strict):
    """``benchroute/<name>``: a fixed model, or per-query routing restricted to a subset."""

    model: str | None = None
    candidates: list[str] | None = None
    max_cost: float | None = Field(default=None, ge=0)
    max_params_b: float | None = Field(default=None, gt=0)
    description: str | None = None


class AuthConfig(_Strict):
    """Bearer-token auth. Keys come from an environment variable (comma-separated; by default
    ``BENCHROUTE_API_KEYS`` when it is set and no other source is named) and/or a file (one key per
    line, ``#`` comments). With no key at all the server refuses to start unless ``allow_anonymous``."""

    keys_env: str | None = None
    keys_file: Path | None = None
    open_metrics: bool = False
    allow_anonymous: bool = False

    _keys: list[SecretStr] = PrivateAttr(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def key_bytes(self) -> list[bytes]:
        return [k.get_secret_value().encode("utf-8") for k in self._keys]


class Limits(_Strict):
    """Request limits. ``max_concurrency`` requests are served at once; a request beyond it waits
    up to ``queue_timeout_s`` for a slot, then gets 503 with Retry-After."""

    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_input_chars: int = Field(default=20_000, gt=0)
    max_inputs: int = Field(default=256, gt=0)
    max_labeled: int = Field(default=256, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    max_concurrency: int = Field(default=64, gt=0)
    queue_timeout_s: float = Field(default=0.0, ge=0)


class EmbeddingConfig(_Strict):
    """Query embedding: micro-batched on one worker thread, with an in-memory LRU cache (queries are
    never written to the on-disk embedding cache). Routing queries are embedded before bulk work
    (/v1/recommend, multi-query /v1/route), which runs in batches of ``bulk_batch_size``.
    ``backend``: ``auto`` (ONNX Runtime when installed, else torch), ``onnx`` or ``torch``;
    ``threads``: ONNX Runtime intra-op threads (default: one per core)."""

    batch_size: int = Field(default=64, gt=0)
    bulk_batch_size: int = Field(default=4, gt=0)
    cache_size: int = Field(default=10_000, ge=0)
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int | None = Field(default=None, gt=0)


class RoutingConfig(_Strict):
    """The routing budget of a chat request: past it, the profile's fallback (best-on-average) answers.

    ``budget_ms`` bounds the time the query waits in the embedding queue, ``timeout_ms`` the whole
    routing step (queue, embedding, kNN)."""

    budget_ms: float = Field(default=50.0, ge=0)
    timeout_ms: float = Field(default=1000.0, gt=0)


class CircuitBreakerConfig(_Strict):
    """Per upstream: open after ``failures`` consecutive failures, retry one call after ``cooldown_s``."""

    failures: int = Field(default=5, gt=0)
    cooldown_s: float = Field(default=15.0, gt=0)


class CorsConfig(_Strict):
    """Cross-origin requests from browsers (off unless ``allow_origins`` names an origin or ``*``)."""

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id", "x-benchroute-session"]
    )
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com (or '*')")
        return v


class SessionsConfig(_Strict):
    """Session routing state: at most ``max_sessions``, each dropped after ``ttl_s`` unused (LRU)."""

    max_sessions: int = Field(default=10_000, gt=0)
    ttl_s: float = Field(default=3600.0, gt=0)


class ServeConfig(_Strict):
    """The whole serve.yaml (every section optional)."""

    models: dict[str, UpstreamModel] = Field(default_factory=dict)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    fallback_model: str | None = None
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: Limits = Field(default_factory=Limits)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)

    _source: str = PrivateAttr(default="serve.yaml")

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, v: dict[str, Profile]) -> dict[str, Profile]:
        for name in v:
            if not name or "/" in name or name != name.strip():
                raise ValueError(
                    f"profile name {name!r} must be non-empty, without '/' or surrounding spaces"
                )
        return v

    @property
    def fallback_disabled(self) -> bool:
        """``fallback_model: null`` written explicitly turns the fallback off."""
        return "fallback_model" in self.model_fields_set and self.fallback_model is None


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _fail(source: str, field: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"{source}: {field}: {message}", hint)


def _read_env_secret(source: str, field: str, var: str) -> str:
    value = os.environ.get(var)
    if value is None or not value.strip():
        raise _fail(
            source,
            field,
            f"environment variable {var} is not set (or empty)",
            f"export {var}=... before starting the server",
        )
    return value.strip()


def _read_keys_file(source: str, path: Path) -> list[str]:
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(source, "auth.keys_file", f"cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise _fail(source, "auth.keys_file", f"{path} is not UTF-8 text") from None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            import logging

            logging.getLogger("benchroute.server").warning(
                "auth.keys_file %s is readable by other users; chmod 600 it", path
            )
    except OSError:
        pass
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def parse_config(data: Any, source: str = "serve.yaml") -> ServeConfig:
    """Validate a parsed YAML document and read the secrets it names (see :func:`load_config`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (models:, profiles:, auth:, limits:)")
    try:
        cfg = ServeConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            lines.append(f"{_field(err['loc'])}: {msg}")
        raise ConfigError(
            f"{source}: " + "; ".join(lines), "see docs/server.md for the serve.yaml schema"
        ) from None
    cfg._source = source
    for name, up in cfg.models.items():
        if not name or name != name.strip() or name.startswith("benchroute"):
            raise _fail(
                source, f"models.{name}", "model names must be non-empty and must not start with 'benchroute'"
            )
        if up.api_key_env:
            up._api_key = SecretStr(_read_env_secret(source, f"models.{name}.api_key_env", up.api_key_env))
    keys: list[str] = []
    if cfg.auth.keys_env is None and cfg.auth.keys_file is None and DEFAULT_KEYS_ENV in os.environ:
        cfg.auth.keys_env = DEFAULT_KEYS_ENV  # the documented default: never silently ignored
    if cfg.auth.keys_env:
        raw = _read_env_secret(source, "auth.keys_env", cfg.auth.keys_env)
        keys += [k.strip() for k in raw.split(",") if k.strip()]
    if cfg.auth.keys_file is not None:
        file_keys = _read_keys_file(source, cfg.auth.keys_file)
        if not file_keys:
            raise _fail(source, "auth.keys_file", f"{cfg.auth.keys_file} holds no key")
        keys += file_keys
    short = [k for k in keys if len(k) < 16]
    if short:
        raise _fail(
            source,
            "auth",
            f"{len(short)} API key(s) shorter than 16 characters",
            "use long random keys, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    cfg.auth._keys = [SecretStr(k) for k in dict.fromkeys(keys)]
    return cfg


def load_config(path: str | os.PathLike[str] | None) -> ServeConfig:
    """Read and validate serve.yaml (``None``: the defaults, no upstream models, no auth).

    Raises :class:`ConfigError` naming the field for a bad URL, an unknown key, a bad number, or an
    environment variable / key file that is named but missing. Model names are checked against the
    router by :func:`resolve_config`.
    """
    if path is None:
        return parse_config({}, "defaults")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the serve config ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: the serve config is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(p))


# ------------------------------------------------------------------------------ against the router


@dataclass(frozen=True)
class ResolvedProfile:
    """What a chat model name means: a fixed model or a candidate list to route among."""

    name: str  # "benchroute" or "benchroute/<profile>"
    fixed: str | None
    candidates: tuple[str, ...]  # router models (with an upstream) to route among
    description: str = ""


@dataclass(frozen=True)
class ResolvedConfig:
    config: ServeConfig
    profiles: dict[str, ResolvedProfile]  # keyed by the public model id
    fallback: str | None
    router_models: tuple[str, ...]


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServeConfig, host: str) -> None:
    """Refuse to serve without auth unless explicitly allowed, on any address.

    Loopback is not exempt: behind a reverse proxy on the same machine (the recommended set-up)
    every request arrives from 127.0.0.1, so an open loopback server is open to anyone."""
    if not config.auth.enabled and not config.auth.allow_anonymous:
        where = (
            "on loopback (a reverse proxy in front makes it public)" if _is_loopback(host) else f"on {host}"
        )
        raise ConfigError(
            f"{config._source}: auth: no API keys configured, refusing to listen {where} without auth",
            f"export {DEFAULT_KEYS_ENV}=<key>[,<key>...] (read by default), set auth.keys_env / "
            "auth.keys_file, or auth.allow_anonymous: true to serve anyone",
        )


def resolve_config(config: ServeConfig, router: Any) -> ResolvedConfig:
    """Check serve.yaml against the router's models and precompute the profiles."""
    src = config._source
    models = list(router.models_)
    known = ", ".join(models)
    for name, up in config.models.items():
        if name not in models and not up.passthrough:
            raise _fail(
                src,
                f"models.{name}",
                f"unknown model {name!r}: the router knows {known}",
                "fix the name, or set passthrough: true to serve it by name only (never routed to)",
            )
    upstream = [m for m in models if m in config.models]
    cost = np.asarray(getattr(router, "cost_", np.full(len(models), np.nan)), dtype=float)
    params = np.asarray(getattr(router, "params_b_", np.full(len(models), np.nan)), dtype=float)

    profiles = {"benchroute": ResolvedProfile("benchroute", None, tuple(upstream), "per-query routing")}
    for pname, prof in config.profiles.items():
        field = f"profiles.{pname}"
        if prof.model is not None:
            if prof.candidates or prof.max_cost is not None or prof.max_params_b is not None:
                raise _fail(src, field, "a profile fixes a model OR restricts candidates/cost/size, not both")
            if prof.model not in config.models:
                raise _fail(
                    src,
                    f"{field}.model",
                    f"unknown model {prof.model!r}: not under models:",
                    f"configured upstream models: {', '.join(config.models) or '(none)'}",
                )
            profiles[f"benchroute/{pname}"] = ResolvedProfile(
                f"benchroute/{pname}", prof.model, (), prof.description or f"always {prof.model}"
            )
            continue
        cands = list(upstream)
        if prof.candidates is not None:
            for c in prof.candidates:
                if c not in models:
                    raise _fail(src, f"{field}.candidates", f"unknown model {c!r}: the router knows {known}")
                if c not in config.models:
                    raise _fail(src, f"{field}.candidates", f"model {c!r} has no upstream under models:")
            cands = [m for m in upstream if m in prof.candidates]
        if prof.max_cost is not None:
            cands = [
                m
                for m in cands
                if math.isfinite(cost[models.index(m)]) and cost[models.index(m)] <= prof.max_cost
            ]
        if prof.max_params_b is not None:
            cands = [
                m
                for m in cands
                if math.isfinite(params[models.index(m)]) and params[models.index(m)] <= prof.max_params_b
            ]
        if not cands:
            raise _fail(
                src,
                field,
                "no model is left to route to (candidates with an upstream, within max_cost "
                "/ max_params_b; models of unknown cost or size are excluded)",
            )
        profiles[f"benchroute/{pname}"] = ResolvedProfile(
            f"benchroute/{pname}", None, tuple(cands), prof.description or f"routing among {', '.join(cands)}"
        )

    if config.fallback_disabled:
        fallback = None
    elif config.fallback_model is not None:
        if config.fallback_model not in config.models:
            raise _fail(
                src,
                "fallback_model",
                f"unknown model {config.fallback_model!r}: not under models:",
                f"configured upstream models: {', '.join(config.models) or '(none)'}",
            )
        fallback = config.fallback_model
    else:
        bma = models[int(router.best_on_average_)]
        fallback = bma if bma in config.models else None
    return ResolvedConfig(config, profiles, fallback, tuple(models))


__all__ = [
    "AuthConfig",
    "CircuitBreakerConfig",
    "CorsConfig",
    "EmbeddingConfig",
    "Limits",
    "Profile",
    "ResolvedConfig",
    "ResolvedProfile",
    "RoutingConfig",
    "ServeConfig",
    "SessionsConfig",
    "UpstreamModel",
    "check_exposure",
    "load_config",
    "parse_config",
    "resolve_config",
]
