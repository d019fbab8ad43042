"""strictcall.server: the OpenAI-compatible server around the grammar engine.

A request's path, one module per step: `api` (routes, middlewares) -> `protocol` (OpenAI shapes -> typed specs)
-> `planning` (prompt from `prompt` and `tool_prompt`, budget, sampling, the compiled turn) -> `generation`
(the run on the engine) -> `responses` / `streaming` (bodies and SSE; `tool_parser` reads text back into
calls). The engine: `engine` (thread, inbox, `step()`), `scheduler` and `kv_slots` (which rows run, plain
Python), `sequence`, `jump_forward`, `model_runner` (batched forwards over a slot KV cache), `model_loader` and
`model_profiles`; `serving` builds it all, `errors` maps failures to OpenAI errors, `metrics` renders Prometheus
text, `config` holds the settings (the only reader of `STRICTCALL_*`) and `cli` the `strictcall` command.
Nothing is imported here, so importing one module does not load torch or FastAPI for the others.
"""
