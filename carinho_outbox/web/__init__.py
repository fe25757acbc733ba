"""The HTTP ingress and operator API (Starlette)."""
