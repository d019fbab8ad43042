"""The CPU forward of a Llama-family model (prompt chunks and decode rows alike) as one native call (``decode_cpu.c``).

Why: on 2 EPYC cores an eager torch decode step of SmolLM2-135M took ~85 ms, most of it MKL's fp32 GEMV
streaming the weights at a third of the memory bandwidth and ~600 parallel regions each waking an idle OpenMP
worker. The native forward reads each weight matrix once for all rows, runs as one parallel region and is batch
invariant (a row's logits are bitwise the same alone, in any batch, however its prompt is chunked; see the C
source), so greedy outputs do not depend on who else is running. It is also 2x faster than torch on prompt
chunks of a few hundred tokens, and even with it on long contexts (the native attention walks the keys once per
query, where torch's SDPA works in blocks).

The q/k/v and gate/up projections are packed into one matrix each, and the model's own modules are pointed at
views of them, so the weights are not held twice and the torch path reads the same numbers.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import torch

from .native import build_library, cpu_flags_line

logger = logging.getLogger(__name__)

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-Wno-psabi"]
_FIELDS = ("ln1", "wqkv", "bqkv", "wo", "bo", "ln2", "wgu", "bgu", "wdown", "bdown")


class _Config(ctypes.Structure):
    _fields_ = [
        ("num_layers", ctypes.c_int64), ("hidden", ctypes.c_int64), ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("intermediate", ctypes.c_int64),
        ("vocab", ctypes.c_int64), ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("bf16", ctypes.c_int),
        ("cache_layer_stride", ctypes.c_int64), ("cache_slot_stride", ctypes.c_int64), ("cache_head_stride", ctypes.c_int64),
    ]  # fmt: skip


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _library
    with _lock:
        if _library is None:
            library = build_library("decode", (Path(__file__).parent / "decode_cpu.c").read_text(), _FLAGS)
            library.strictcall_decode.restype = None
            pointers = [ctypes.c_void_p]
            library.strictcall_decode.argtypes = (
                [ctypes.POINTER(_Config)] + pointers * 6 + [ctypes.c_int64] + pointers * 5 + [ctypes.c_int64] + pointers * 3
                + [ctypes.c_int64, ctypes.c_int]
            )
            _library = library
        return _library


def cpu_has_bf16_dot() -> bool:
    """The CPU multiplies bf16 pairs into fp32 in one instruction (AVX512-BF16: vdpbf16ps)."""
    return "avx512_bf16" in cpu_flags_line().split()


def config_unsupported_reason(config: Any) -> str | None:
    """Why the native step cannot run a model of this Hugging Face config (None: it can, as far as the config says)."""
    if getattr(config, "model_type", None) not in ("llama", "mistral", "qwen2"):
        return f"the architecture is {getattr(config, 'model_type', None)} (the native step runs llama, mistral and qwen2)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"the activation is {config.hidden_act}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the attention has a sliding window"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim > 512 or config.num_attention_heads % config.num_key_value_heads:
        return "the attention's shape is not supported"
    return None


def unsupported_reason(model: Any) -> str | None:
    """Why the native step cannot run this model (None: it can)."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return f"the model is on {parameter.device.type}"
    if parameter.dtype not in (torch.float32, torch.bfloat16):
        return f"the model's dtype is {parameter.dtype} (the native step runs fp32 and bf16 models)"
    reason = config_unsupported_reason(model.config)
    if reason is not None:
        return reason
    layer = model.model.layers[0]
    attention = layer.self_attn
    if hasattr(attention, "q_norm"):
        return "the attention normalizes q and k (Qwen3)"
    if not all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
        return "the MLP is not gate/up/down"
    if type(layer.input_layernorm).__name__ not in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"):
        return f"the norm is {type(layer.input_layernorm).__name__}"
    return None


class NativeDecoder:
    """Holds the packed weights of one model and runs decode steps over the runner's KV cache.

    Raises:
        OSError: the native library cannot be built (no C compiler).
    """

    def __init__(self, model: Any, keys: torch.Tensor, values: torch.Tensor):
        self.library = _load()
        config = model.config
        self.model = model
        self.keys, self.values = keys, values
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dtype = next(model.parameters()).dtype  # of the matrices and the KV cache; the rest is fp32
        self.num_threads = torch.get_num_threads()
        self._held: list[torch.Tensor] = []  # keeps every tensor whose address the C side holds
        rows = []
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            wqkv, bqkv = self._pack(attention.q_proj, attention.k_proj, attention.v_proj)
            wgu, bgu = self._pack(mlp.gate_proj, mlp.up_proj)
            matrices = {"wqkv": wqkv, "wo": attention.o_proj.weight, "wgu": wgu, "wdown": mlp.down_proj.weight}
            vectors = {"ln1": layer.input_layernorm.weight, "bqkv": bqkv, "bo": attention.o_proj.bias, "ln2": layer.post_attention_layernorm.weight,
                       "bgu": bgu, "bdown": mlp.down_proj.bias}
            rows.append([self._address(matrices[name]) if name in matrices else self._address(vectors[name], fp32=True) for name in _FIELDS])
        self.layer_table = torch.tensor(rows, dtype=torch.int64)
        self.final_norm = self._address(model.model.norm.weight, fp32=True)
        self.lm_head = self._address(model.lm_head.weight)
        self.lm_head_bias = self._address(getattr(model.lm_head, "bias", None), fp32=True)
        scale = getattr(model.model.layers[0].self_attn, "scaling", self.head_dim**-0.5)
        self.config = _Config(
            len(model.model.layers), config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            self.head_dim, config.intermediate_size, model.lm_head.weight.shape[0], float(getattr(config, "rms_norm_eps", 1e-6)),
            float(scale), int(self.dtype == torch.bfloat16), keys.stride(0), keys.stride(1), keys.stride(2),
        )  # fmt: skip
        if keys.dtype != self.dtype or not keys.is_contiguous():
            raise ValueError("the KV cache must be contiguous and of the model's dtype")

    def _address(self, tensor: torch.Tensor | None, fp32: bool = False) -> int:
        """The address of a weight the C side reads: matrices as they are (views kept), vectors as fp32 copies."""
        if tensor is None:
            return 0
        tensor = tensor.detach().float().contiguous() if fp32 else tensor.detach()
        if not tensor.is_contiguous() or tensor.dtype != (torch.float32 if fp32 else self.dtype):
            raise ValueError("the native step needs contiguous weights of the model's dtype")
        self._held.append(tensor)
        return tensor.data_ptr()

    @staticmethod
    def _pack(*linears: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One matrix (and bias) for several projections of the same input; the modules then view into it."""
        weight = torch.cat([linear.weight.detach() for linear in linears])
        bias = None
        if any(linear.bias is not None for linear in linears):
            bias = torch.cat([torch.zeros(linear.weight.shape[0], dtype=weight.dtype) if linear.bias is None else linear.bias.detach() for linear in linears])
        start = 0
        for linear in linears:
            end = start + linear.weight.shape[0]
            linear.weight.data = weight[start:end]
            if linear.bias is not None and bias is not None:
                linear.bias.data = bias[start:end]
            start = end
        return weight, bias

    @torch.inference_mode()
    def forward(self, slots: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                last: torch.Tensor) -> torch.Tensor:
        """Run all layers for M new tokens and return the logits after the `last` tokens.

        Args:
            slots, positions: (M,) int64, each token's cache slot and position.
            hidden: (M, hidden) fp32 embeddings of the tokens (overwritten).
            cos, sin: (M, head_dim) fp32 rotary factors at the tokens' positions.
            last: (R,) int64 indices of the tokens whose logits are returned.

        Returns:
            (R, vocab) fp32 logits.
        """
        config = self.config
        num_tokens, num_rows = hidden.shape[0], last.shape[0]
        max_keys = int(positions.max()) + 1
        q_width = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
        per_token = config.hidden + q_width + config.num_heads * config.head_dim + 3 * config.intermediate
        size = num_tokens * per_token + num_rows * config.hidden + self.num_threads * (max_keys + num_tokens * 16)
        if config.bf16:  # the matmul inputs rounded to bf16: two per float
            size += (num_tokens * (config.hidden + config.num_heads * config.head_dim + config.intermediate) + num_rows * config.hidden + 1) // 2
        work = torch.empty(size, dtype=torch.float32)
        logits = torch.empty((num_rows, config.vocab), dtype=torch.float32)
        tensors = [slots, positions, hidden, cos, sin, last]
        if not all(t.is_contiguous() for t in tensors):
            raise ValueError("the native step needs contiguous inputs")
        self.library.strictcall_decode(
            ctypes.byref(config), self.layer_table.data_ptr(), self.final_norm, self.lm_head, self.lm_head_bias,
            self.keys.data_ptr(), self.values.data_ptr(), num_tokens, slots.data_ptr(), positions.data_ptr(),
            cos.data_ptr(), sin.data_ptr(), hidden.data_ptr(), num_rows, last.data_ptr(), logits.data_ptr(),
            work.data_ptr(), max_keys, self.num_threads,
        )  # fmt: skip
        return logits
