"""One ``APIRouter`` per endpoint group: ``routing`` (/v1/route, /v1/recommend), ``openai`` (the
OpenAI-compatible proxy: /v1/chat/completions, /v1/models) and ``ops`` (/healthz, /readyz, /metrics)."""
