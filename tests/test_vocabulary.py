"""Vocabulary: every token's bytes are exactly what the tokenizer decodes it to."""

from __future__ import annotations

import numpy as np
import pytest

from strictcall.grammars.vocabulary import Vocabulary, _piece_bytes

TEXTS = [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "東京 é café naïve 🙂 emoji",
    "tabs\tand\nnewlines\r\n and  double  spaces",
    "<tool_call>\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(smollm2_tokenizer, smollm2_vocabulary: Vocabulary, text: str) -> None:
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(smollm2_vocabulary.token_bytes[i] for i in ids) == text.encode("utf-8")
    assert smollm2_vocabulary.bytes_of([*ids, *smollm2_vocabulary.eos_token_ids]) == text.encode("utf-8")  # specials spell nothing


def test_special_tokens_emit_no_content_and_end_of_turn_is_eos(smollm2_tokenizer, smollm2_vocabulary: Vocabulary) -> None:
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert smollm2_vocabulary.token_bytes[im_end] is None
    assert smollm2_vocabulary.token_bytes[im_start] is None
    assert im_end in smollm2_vocabulary.eos_token_ids
    assert im_start not in smollm2_vocabulary.eos_token_ids


def test_single_byte_tokens_spell_any_text(smollm2_vocabulary: Vocabulary) -> None:
    # Byte-level BPE keeps single-byte tokens: printable ASCII, whitespace and every UTF-8 continuation byte.
    singles = {b[0] for b in smollm2_vocabulary.token_bytes if b is not None and len(b) == 1}
    assert set(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D} | set(range(0x80, 0xC0)) <= singles


def test_padded_logits_width_and_fingerprint(smollm2_tokenizer) -> None:
    base = Vocabulary.from_tokenizer(smollm2_tokenizer)
    padded = Vocabulary.from_tokenizer(smollm2_tokenizer, vocab_size=base.vocab_size + 64)
    assert padded.num_words == (base.vocab_size + 64 + 31) // 32
    assert padded.token_bytes[-1] is None
    assert padded.fingerprint != base.fingerprint
    assert Vocabulary.from_tokenizer(smollm2_tokenizer).fingerprint == base.fingerprint


def test_sentencepiece_pieces() -> None:
    assert _piece_bytes("\u2581Hello", byte_level=False) == b" Hello"
    assert _piece_bytes("<0x0A>", byte_level=False) == b"\n"
    assert _piece_bytes("<0xE6>", byte_level=False) == b"\xe6"


def test_added_non_special_token_is_matched_by_its_text(smollm2_tokenizer) -> None:
    from transformers import AddedToken

    tokenizer = smollm2_tokenizer
    vocab = Vocabulary.from_tokenizer(tokenizer)
    # Simulate a tokenizer with `<tool_call>` as one added (non-special) token, as Qwen's has.
    added = {len(vocab.token_bytes): AddedToken("<tool_call>", special=False)}

    class WithToolToken:
        eos_token_id = tokenizer.eos_token_id
        added_tokens_decoder = {**tokenizer.added_tokens_decoder, **added}
        backend_tokenizer = tokenizer.backend_tokenizer

        @staticmethod
        def get_vocab() -> dict[str, int]:
            return {**tokenizer.get_vocab(), "<tool_call>": len(vocab.token_bytes)}

    extended = Vocabulary.from_tokenizer(WithToolToken())
    assert extended.token_bytes[-1] == b"<tool_call>"


def test_content_tokens_are_sorted_and_sliced_by_first_byte(byte_vocabulary: Vocabulary) -> None:
    tokens = byte_vocabulary.content_tokens
    for byte in (0, ord("{"), ord('"'), 0xC3, 255):
        rows = np.arange(tokens.first_byte_offsets[byte], tokens.first_byte_offsets[byte + 1])
        assert len(rows) > 0
        assert (tokens.matrix[rows, 0] == byte).all()
