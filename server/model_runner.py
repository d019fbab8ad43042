"""Batched forwards of a causal LM over a slot-based KV cache.

Invariant: slot `s` of the cache holds the keys and values of positions `0..len-1` of exactly one sequence, so
sequences join and leave the batch at any step, and each row attends only to its own slot up to its own
position. Rows are any set of slots; when they are `0..B-1` (the engine keeps them so) the cache is read
through a view, with no per-step copy.

On the CPU, for the models it supports, every forward is one native call (`strictcall.kernels.decode_cpu`):
2-3x faster than torch at decode and at prompt chunks of up to a few hundred tokens, and a row's logits are
bitwise the same alone or in any batch, however its prompt was chunked or reused from the prefix cache. Otherwise
(a GPU, Qwen3, ...) the Hugging Face modules run (projections, rotary embedding, MLP: the reference's numerics)
with our attention over the cache; that covers the Llama family (Llama, Mistral, Qwen2/3, SmolLM).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from strictcall.kernels.decode_cpu import NativeDecoder, unsupported_reason

logger = logging.getLogger(__name__)


class ModelRunner:
    """Batched forwards with a preallocated KV cache of `max_batch_size` slots.

    Args:
        model: a Hugging Face causal LM of the Llama family.
        max_batch_size: number of cache slots.
        max_model_len: positions per slot.
        native: run the native CPU forward where it supports the model (False: always torch).
    """

    def __init__(self, model: Any, max_batch_size: int, max_model_len: int, native: bool = True):
        self.model = model
        self.layers = model.model.layers
        attention = self.layers[0].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attention, name):
                raise ValueError(f"{type(model).__name__} is not supported: its attention has no {name} (Llama family only)")
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.vocab_size = config.vocab_size
        self.max_batch_size = max_batch_size
        self.max_model_len = min(max_model_len, getattr(config, "max_position_embeddings", max_model_len))
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        shape = (len(self.layers), max_batch_size, self.num_kv_heads, self.max_model_len, self.head_dim)
        # torch.empty: pages are committed as positions are used, not up front. Positions a row does not own
        # are still read (and masked) when a longer row shares the batch, and a masked NaN would poison the
        # attention sum (0 * NaN), so each slot is zeroed up to the furthest position any batch has read.
        self.keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.values = torch.empty(shape, dtype=self.dtype, device=self.device)
        self._zeroed = [0] * max_batch_size
        self.native = self._native_decoder() if native else None

    def _native_decoder(self) -> NativeDecoder | None:
        reason = unsupported_reason(self.model)
        if reason is None:
            try:
                return NativeDecoder(self.model, self.keys, self.values)
            except OSError as error:
                reason = str(error)
        logger.info("forwards run on torch, not the native CPU step: %s", reason)
        return None

    @torch.inference_mode()
    def forward(self, slots: list[int], input_ids: list[list[int]], start_positions: list[int]) -> torch.Tensor:
        """Append each row's tokens to its slot and return the logits after each row's last token.

        Args:
            slots: the cache slot of each row.
            input_ids: each row's new tokens (rows may differ in length; padded inside on torch).
            start_positions: the position of each row's first new token (= tokens already cached).

        Returns:
            `(rows, vocab_size)` float32 logits.
        """
        lengths = [len(ids) for ids in input_ids]
        if any(p + n > self.max_model_len for p, n in zip(start_positions, lengths)):
            raise ValueError(f"a row would pass max_model_len={self.max_model_len}")
        if self.native is not None:
            return self._native_forward(slots, input_ids, start_positions)
        num_rows = len(slots)
        width = max(lengths)
        device = self.device
        ids = torch.zeros((num_rows, width), dtype=torch.long)
        for row, row_ids in enumerate(input_ids):
            ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        offsets = torch.arange(width)
        starts = torch.tensor(start_positions)
        length_t = torch.tensor(lengths)
        valid = offsets[None, :] < length_t[:, None]
        positions = torch.where(valid, starts[:, None] + offsets[None, :], 0)
        num_keys = int((starts + length_t).max())
        for slot in slots:
            if self._zeroed[slot] < num_keys:
                self.keys[:, slot, :, self._zeroed[slot] : num_keys] = 0
                self.values[:, slot, :, self._zeroed[slot] : num_keys] = 0
                self._zeroed[slot] = num_keys
        keys_at = torch.arange(num_keys)
        # Row r, query t sees keys 0..position[r, t]; padded queries see key 0 only (never an empty row).
        mask = (keys_at[None, None, :] <= positions[:, :, None])[:, None].to(device)
        slot_t = torch.tensor(slots)
        slots_on_device = slot_t.to(device)  # once, not per layer: a copy inside the loop would wait for the GPU
        write_rows, write_cols = valid.nonzero(as_tuple=True)
        write_slots, write_positions = slot_t[write_rows].to(device), positions[write_rows, write_cols].to(device)
        write_rows, write_cols = write_rows.to(device), write_cols.to(device)
        contiguous = slots == list(range(slots[0], slots[0] + num_rows))

        hidden = self.model.model.embed_tokens(ids.to(device))
        position_ids = positions.to(device)
        cos, sin = self.model.model.rotary_emb(hidden, position_ids)
        cos, sin = cos[:, None], sin[:, None]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            q = attention.q_proj(normed).view(num_rows, width, self.num_heads, self.head_dim)
            k = attention.k_proj(normed).view(num_rows, width, self.num_kv_heads, self.head_dim)
            v = attention.v_proj(normed).view(num_rows, width, self.num_kv_heads, self.head_dim)
            if hasattr(attention, "q_norm"):  # Qwen3
                q, k = attention.q_norm(q), attention.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            layer_keys, layer_values = self.keys[index], self.values[index]
            # (slot, :, position) <- the row's new key; advanced indices around a slice put N first.
            layer_keys[write_slots, :, write_positions] = k[write_rows, :, write_cols]
            layer_values[write_slots, :, write_positions] = v[write_rows, :, write_cols]
            if contiguous:
                cached_k = layer_keys[slots[0] : slots[0] + num_rows, :, :num_keys]
                cached_v = layer_values[slots[0] : slots[0] + num_rows, :, :num_keys]
            else:
                cached_k = layer_keys[slots_on_device, :, :num_keys]
                cached_v = layer_values[slots_on_device, :, :num_keys]
            out = F.scaled_dot_product_attention(q, cached_k, cached_v, attn_mask=mask, scale=attention.scaling, enable_gqa=True)
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(num_rows, width, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last = hidden[torch.arange(num_rows, device=device), (length_t - 1).to(device)]
        return self.model.lm_head(self.model.model.norm(last)).float()

    def _native_forward(self, slots: list[int], input_ids: list[list[int]], start_positions: list[int]) -> torch.Tensor:
        assert self.native is not None
        token_slots = [slot for slot, ids in zip(slots, input_ids) for _ in ids]
        token_positions = [start + i for start, ids in zip(start_positions, input_ids) for i in range(len(ids))]
        ids = torch.tensor([token for row in input_ids for token in row], dtype=torch.long)
        positions = torch.tensor(token_positions, dtype=torch.long)
        last = torch.tensor([len(ids) for ids in input_ids], dtype=torch.long).cumsum(0) - 1
        hidden = self.model.model.embed_tokens(ids).float().contiguous()
        cos, sin = self.model.model.rotary_emb(hidden[None], positions[None])
        logits = self.native.forward(torch.tensor(token_slots, dtype=torch.long), positions, hidden, cos[0].contiguous(), sin[0].contiguous(), last)
        for slot, start, ids_of_row in zip(slots, start_positions, input_ids):  # positions 0..end now hold keys
            self._zeroed[slot] = max(self._zeroed[slot], start + len(ids_of_row))
        return logits

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of one slot's cache to another (prefix reuse, compaction)."""
        self._zeroed[target] = self._finite_prefix_after_copy(self._zeroed[target], self._zeroed[source], length)
        if length:
            self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
            self.values[:, target, :, :length] = self.values[:, source, :, :length]

    def swap_slots(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` positions of two slots."""
        if length and a != b:
            za, zb = self._zeroed[a], self._zeroed[b]
            self._zeroed[a] = self._finite_prefix_after_copy(za, zb, length)
            self._zeroed[b] = self._finite_prefix_after_copy(zb, za, length)
            for cache in (self.keys, self.values):
                held = cache[:, a, :, :length].clone()
                cache[:, a, :, :length] = cache[:, b, :, :length]
                cache[:, b, :, :length] = held

    @staticmethod
    def _finite_prefix_after_copy(target: int, source: int, length: int) -> int:
        # Positions [0, length) now come from the source, the rest stays the target's.
        return source if source < length else max(length, target)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
