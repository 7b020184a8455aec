"""Test harness: mock AI providers (``mock``), SSE helpers (``sse``) and the relay process
launcher (``relay``) used by ``tests/conftest.py``."""
