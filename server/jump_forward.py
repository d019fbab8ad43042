"""Jump-forward: the text a grammar forces after a sampled token, appended as the tokenizer splits it, without
model steps.

The sampled token and the forced text are tokenized together, so `ec` + forced `ological_impact` becomes
`ecological`, `_impact` and `]` + forced `, "` becomes `],`, ` "`: the model goes on from the split it was
trained on. Neither has reached the model yet, so the merge costs nothing (BFCL multiple: 14 of 40 calls had
such a seam before, 1 after).

Invariant: every token returned has been accepted by the matcher, in order; the first one spells at least the
sampled token's bytes; the last forced token is always left to the model (it may merge with what follows:
llguidance's fast-forward trap); and no more than `budget` tokens are returned.
"""

from __future__ import annotations

from typing import Any

from strictcall.grammars import Matcher, Vocabulary


class JumpForward:
    """Forced-text tokenization for one tokenizer.

    Args:
        vocabulary: the token bytes.
        tokenizer: a Hugging Face tokenizer (its `encode` splits forced text as the model would see it).
    """

    def __init__(self, vocabulary: Vocabulary, tokenizer: Any):
        self.vocabulary = vocabulary
        self.tokenizer = tokenizer

    def extend(self, matcher: Matcher, sampled: int, budget: int) -> list[int]:
        """The sampled token (already accepted by `matcher`), then the grammar's forced text, at most `budget` tokens.

        If the joint split would not cover the sampled token's bytes (a partial character, a split the grammar
        refuses), the forced text is tokenized on its own after the sampled token.
        """
        if budget < 2:
            return [sampled]
        forced = matcher.forced_bytes()
        if not forced:
            return [sampled]
        head = self.vocabulary.token_bytes[sampled] or b""
        matcher.rollback(1)
        joint = self._accept_tokenized(matcher, head + forced, budget)
        if len(self.vocabulary.bytes_of(joint)) >= len(head) > 0:
            return joint
        matcher.rollback(len(joint))
        matcher.accept_token(sampled)
        return [sampled] + self._accept_tokenized(matcher, forced, budget - 1)

    def _accept_tokenized(self, matcher: Matcher, data: bytes, budget: int) -> list[int]:
        """`data` tokenized (minus its last token), accepted into the matcher as far as the grammar takes it;
        nothing if the tokens do not spell a prefix of `data` (an undecodable byte)."""
        text = data.decode("utf-8", errors="ignore")  # a partial last character stays for the model
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:-1][:budget]
        if not data.startswith(self.vocabulary.bytes_of(ids)):
            return []
        accepted = []
        for token in ids:
            if not matcher.accept_token(token):
                break  # a split the grammar does not take: let the model go on from here
            accepted.append(token)
        return accepted
