"""A tokenizer's vocabulary as the exact bytes each token id emits.

Invariant: decoding a sequence of content tokens gives the concatenation of their `token_bytes`, so a grammar
that walks bytes and a model that emits tokens agree. Special tokens (BOS, `<|im_end|>`, ...) emit no content:
they are never allowed inside a grammar; the end-of-sequence ids are allowed only where a grammar accepts.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from strictcall.grammars.masks import pack_token_bitmask

# Tokens that end an assistant turn in the common chat templates; the tokenizer's own eos id is added to these.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

_SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the printable character that stands for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_LEVEL = _byte_level_decoder()


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return "ByteLevel" in backend.to_str()
    return False


def _piece_bytes(piece: str, byte_level: bool) -> bytes:
    if byte_level:
        if all(ch in _BYTE_LEVEL for ch in piece):
            return bytes(_BYTE_LEVEL[ch] for ch in piece)
        return piece.encode("utf-8")
    match = _SENTENCEPIECE_BYTE.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


class Vocabulary:
    """Token id -> bytes, with the end-of-sequence ids and the logits width.

    Args:
        token_bytes: for each id below `vocab_size`, the bytes it emits, or None for a special token.
        eos_token_ids: ids that end generation; allowed only where a grammar accepts.
        vocab_size: the logits width; may exceed `len(token_bytes)` (padded embeddings); ids past the
            tokenizer are never allowed.
    """

    def __init__(self, token_bytes: Sequence[bytes | None], eos_token_ids: Iterable[int], vocab_size: int | None = None):
        vocab_size = len(token_bytes) if vocab_size is None else vocab_size
        if vocab_size < len(token_bytes):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(token_bytes)} tokens")
        self.vocab_size = vocab_size
        self.token_bytes: list[bytes | None] = list(token_bytes) + [None] * (vocab_size - len(token_bytes))
        self.eos_token_ids = tuple(sorted(set(eos_token_ids)))
        for token_id in self.eos_token_ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"eos token id {token_id} is outside the vocabulary (size {vocab_size})")

    @classmethod
    def from_token_bytes(cls, token_bytes: Sequence[bytes | None], eos_token_ids: Iterable[int], vocab_size: int | None = None) -> Vocabulary:
        """A vocabulary given directly as bytes (tests, custom tokenizers)."""
        return cls(token_bytes, eos_token_ids, vocab_size)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        vocab_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
        text_special_tokens: Iterable[str] = (),
    ) -> Vocabulary:
        """Read a Hugging Face tokenizer: byte-level BPE (`Ġ`), SentencePiece (`▁`, `<0xNN>`), added tokens.

        Args:
            tokenizer: a `transformers` tokenizer.
            vocab_size: the model's logits width, when larger than the tokenizer.
            eos_token_ids: override the end ids; by default the tokenizer's eos plus the end-of-turn tokens
                of the common chat templates that the vocabulary holds.
            text_special_tokens: special tokens that a tool-call format writes (Mistral's `[TOOL_CALLS]`):
                they emit their text, so a grammar can require them.
        """
        as_text = set(text_special_tokens)
        byte_level = _is_byte_level(tokenizer)
        vocab: dict[str, int] = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        token_bytes: list[bytes | None] = [None] * size
        for piece, token_id in vocab.items():
            token_bytes[token_id] = _piece_bytes(piece, byte_level)
        for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
            # An added token is matched by its literal text; a special one emits no content at all.
            keep = not added.special or added.content in as_text
            token_bytes[token_id] = added.content.encode("utf-8") if keep else None
        if eos_token_ids is None:
            ends = {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
            if tokenizer.eos_token_id is not None:
                ends.add(tokenizer.eos_token_id)
            eos_token_ids = ends
        return cls(token_bytes, eos_token_ids, vocab_size or size)

    def bytes_of(self, token_ids: Iterable[int]) -> bytes:
        """The bytes these tokens spell (special tokens spell nothing)."""
        return b"".join(self.token_bytes[t] or b"" for t in token_ids)

    @property
    def num_words(self) -> int:
        """Width of a token bitmask row: ceil(vocab_size / 32) int32 words."""
        return (self.vocab_size + 31) // 32

    @cached_property
    def fingerprint(self) -> str:
        """A content hash: equal vocabularies share grammar caches."""
        digest = hashlib.sha256()
        digest.update(f"{self.vocab_size}:{self.eos_token_ids}".encode())
        for token in self.token_bytes:
            digest.update(b"\xff" if token is None else len(token).to_bytes(2, "little") + token)
        return digest.hexdigest()[:16]

    @cached_property
    def _sorted_tokens(self) -> tuple[list[bytes], list[int]]:
        pairs = sorted((data, token_id) for token_id, data in enumerate(self.token_bytes) if data)
        return [data for data, _ in pairs], [token_id for _, token_id in pairs]

    @cached_property
    def max_token_bytes(self) -> int:
        return max((len(data) for data in self.token_bytes if data), default=0)

    def token_ids_starting_with(self, prefix: bytes) -> list[int]:
        """The content tokens whose bytes start with `prefix` (equal to it included)."""
        keys, ids = self._sorted_tokens
        start = bisect.bisect_left(keys, prefix)
        end = start
        while end < len(keys) and keys[end].startswith(prefix):
            end += 1
        return ids[start:end]

    def token_ids_spelling(self, data: bytes) -> list[int]:
        """The content tokens whose bytes are exactly `data`."""
        keys, ids = self._sorted_tokens
        start = bisect.bisect_left(keys, data)
        end = bisect.bisect_right(keys, data)
        return ids[start:end]

    @cached_property
    def eos_bitmask(self) -> np.ndarray:
        """The packed mask row allowing only the end-of-sequence ids (read-only)."""
        mask = pack_token_bitmask(np.array(self.eos_token_ids, dtype=np.int64), self.num_words)
        mask.setflags(write=False)
        return mask

    @cached_property
    def content_bitmask(self) -> np.ndarray:
        """The packed mask row allowing every content token (no special token, no id past the tokenizer)."""
        mask = pack_token_bitmask(self.content_tokens.ids, self.num_words)
        mask.setflags(write=False)
        return mask

    @cached_property
    def content_tokens(self) -> ContentTokens:
        """The non-special tokens as a padded byte matrix, sorted by bytes, for vectorized walks."""
        return ContentTokens(self.token_bytes)


class ContentTokens:
    """Non-empty content tokens sorted by their bytes: `ids[i]` emits `matrix[i, :lengths[i]]`.

    Sorted order makes the tokens that start with one byte a contiguous slice (`first_byte_offsets`), so a
    state that allows few first bytes only looks at those tokens.
    """

    def __init__(self, token_bytes: Sequence[bytes | None]):
        pairs = sorted((b, i) for i, b in enumerate(token_bytes) if b)
        self.ids = np.array([i for _, i in pairs], dtype=np.int64)
        self.lengths = np.array([len(b) for b, _ in pairs], dtype=np.int64)
        width = int(self.lengths.max()) if len(pairs) else 1
        self.matrix = np.zeros((len(pairs), width), dtype=np.uint8)
        for row, (b, _) in enumerate(pairs):
            self.matrix[row, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        # One contiguous array per byte position: walks gather a position's bytes for the live tokens.
        self.columns = np.ascontiguousarray(self.matrix.T).astype(np.int64)
        # Each token's set of bytes as 256 bits (4 x uint64), for subset tests against a state's self-loop.
        present = np.zeros((len(pairs), 256), dtype=bool)
        present[np.repeat(np.arange(len(pairs)), self.lengths), np.concatenate([np.frombuffer(b, np.uint8) for b, _ in pairs])] = True
        self.byte_sets = np.packbits(present, axis=1, bitorder="little").view("<u8")
        first = self.matrix[:, 0] if len(pairs) else np.zeros(0, dtype=np.uint8)
        self.first_byte_offsets = np.searchsorted(first, np.arange(257), side="left")
