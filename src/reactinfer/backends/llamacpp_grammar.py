"""Grammar-constrained sampling for one sequence on llama.cpp: a GBNF grammar (llama.cpp's
own grammar sampler) that says which tokens may come next.

The server's decode loop holds one `GrammarConstraint` per constrained sequence (the
others are unaffected) and uses it as a token constraint: `allows` checks the token the
sampler picked from the raw logits (one candidate: cheap, and right most of the time),
and only when it is refused does `mask` run the grammar over the whole vocabulary, as
llama.cpp's own server does. `accept` advances the grammar; an end-of-generation token
is allowed only where the grammar is complete.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..core.errors import UserError

_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarConstraint:
    """The grammar state of one sequence (not shared: each sequence advances its own)."""

    def __init__(self, model: Any, gbnf: str, n_vocab: int):
        import llama_cpp

        self._lib = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(model.model)
        self._smpl = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not self._smpl:
            raise UserError("llama.cpp could not parse the grammar made from the request: "
                            "simplify the JSON schema")
        self._all = np.zeros(n_vocab, dtype=_DATA)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._one = np.zeros(1, dtype=_DATA)
        self._arr_all = self._array(self._all)
        self._arr_one = self._array(self._one)

    def _array(self, data: np.ndarray) -> Any:
        lib = self._lib
        return lib.llama_token_data_array(
            data=data.ctypes.data_as(lib.llama_token_data_p), size=len(data), selected=-1,
            sorted=False)

    def __del__(self) -> None:
        smpl = getattr(self, "_smpl", None)
        if smpl:
            self._lib.llama_sampler_free(smpl)
            self._smpl = None

    def allows(self, token: int) -> bool:
        """The grammar accepts `token` next."""
        self._one["id"][0], self._one["logit"][0] = token, 0.0
        self._arr_one.size, self._arr_one.selected = 1, -1
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(self._arr_one))
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """A copy of `logits` (V,) with every token the grammar refuses at -inf; with `ids`,
        only those tokens are checked (the others are -inf too): the grammar's cost grows
        with the candidates, ~16-48 ms for smollm2's 49k tokens, <1 ms for 64."""
        ids = self._ids if ids is None else ids.astype(np.intc)
        d = self._all[:len(ids)]
        d["id"], d["logit"], d["p"] = ids, logits[ids], 0.0
        self._arr_all.size, self._arr_all.selected, self._arr_all.sorted = len(d), -1, False
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(self._arr_all))
        out = np.full(len(logits), -np.inf, dtype=np.float32)
        n = int(self._arr_all.size)
        out[d["id"][:n]] = d["logit"][:n]
        return out

    def is_end(self, token: int) -> bool:
        """`token` ends generation (llama.cpp's end-of-generation tokens)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, int(token)))

    def accept(self, token: int) -> None:
        """Advance the grammar past `token` (which `allows` or `mask` let through: llama.cpp
        aborts the process on a token the grammar refuses)."""
        self._lib.llama_sampler_accept(self._smpl, int(token))
