"""strictcall.server: the OpenAI-compatible server around the grammar engine.

`model_runner` (batched forwards over a slot KV cache), `scheduler` and `engine` (continuous batching with
grammar masks and jump-forward, on its own thread), `chat` (messages -> prompt, text -> content and
tool_calls), `api` (FastAPI routes, OpenAI-shaped responses, errors and SSE), `metrics` (Prometheus text),
`config` (settings and `STRICTCALL_*` variables) and `cli` (`strictcall serve`). Nothing is imported here, so
importing one module does not load torch or FastAPI for the others.
"""
