"""Compiled grammars kept on disk, so a server restart (or `strictcall compile`) pays first-visit masks once.

Invariant: an entry is used only for the exact regex, vocabulary fingerprint and automaton limits it was built
with (all in its key), so a loaded grammar gives the same masks as a fresh one. Entries are pickles written by
this process's user into a directory it owns; never point the cache at a directory others can write.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strictcall.grammars.compiler import CompiledGrammar, CompilerLimits
    from strictcall.grammars.vocabulary import Vocabulary

_FORMAT_VERSION = 2  # 2: grammars with rules, DFA states held as thread sets


class DiskCache:
    """A directory of pickled `CompiledGrammar`s (their DFA rows and token masks), keyed by content.

    Args:
        directory: created if missing.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, regex: str, vocabulary: Vocabulary, limits: CompilerLimits) -> Path:
        key = f"{_FORMAT_VERSION}\0{vocabulary.fingerprint}\0{limits.max_nfa_states}\0{limits.max_dfa_states}\0{regex}"
        return self.directory / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".grammar")

    def load(self, regex: str, vocabulary: Vocabulary, limits: CompilerLimits) -> CompiledGrammar | None:
        """The stored grammar, or None if there is none (or it cannot be read: it is then rebuilt)."""
        path = self._path(regex, vocabulary, limits)
        try:
            with open(path, "rb") as f:
                grammar = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            return None
        if getattr(grammar, "regex", None) != regex:
            return None
        grammar.vocabulary = vocabulary
        return grammar

    def store(self, grammar: CompiledGrammar, limits: CompilerLimits) -> Path:
        """Write a grammar (atomically: a reader never sees half a file)."""
        path = self._path(grammar.regex, grammar.vocabulary, limits)
        handle, staging = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            pickle.dump(grammar, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(staging, path)
        return path
