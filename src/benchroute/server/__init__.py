"""The routing API and OpenAI-compatible proxy (FastAPI + uvicorn)."""
