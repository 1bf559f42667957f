"""Token-level credit for checkable claims inside a response (fine-grained rewards).

An outcome advantage gives every token of a response the same sign: a response that reads three
bars of a chart right and one wrong pays the wrong reading as much as the right ones. A span credit
term (`reward_registry.Span`) lists a response's claims, each with the characters that make it, an
item key and its value against the ground truth; here each claim's tokens get

    A_t += coef * (v_c - mean of v over the claims of the same key in the prompt's group)

for every claim c whose tokens cover t: a right reading is pushed up and a wrong one down relative
to what the other samples of the same prompt claimed for that item, and tokens outside any claim get
nothing from it. The term is added to any estimator's advantage (GRPO's, RLOO's, ...). It is
centred per item and not scaled by a standard deviation: a claim's credit is at most `coef` in size,
so `coef` weighs it against the outcome advantage directly. An item claimed once in its group has
no baseline and gets 0, as a group of one does in GRPO.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Sequence

import torch

TokenSpan = tuple[int, int, str, float]  # [first token, last token + 1), key, value


def char_spans_to_tokens(spans: Sequence, token_ends: Sequence[int]) -> list[TokenSpan]:
    """Claims in character offsets -> claims in response-token offsets. `token_ends[t]` is where
    token t's text ends in the same string (non-decreasing); a claim covers every token whose
    characters overlap it. Claims that end past the last token's text, or are empty, are dropped."""
    out = []
    total = token_ends[-1] if token_ends else 0
    for s in spans:
        start, end, key, value = s
        if end <= start or end > total or start < 0:
            continue
        first = bisect.bisect_right(token_ends, start)  # the first token ending after `start`
        last = bisect.bisect_left(token_ends, end)  # the token in which `end` falls (its end >= end)
        out.append((first, last + 1, key, float(value)))
    return out


def span_credit_advantage(spans: Sequence[Sequence[TokenSpan]], group_index: torch.Tensor,
                          response_mask: torch.Tensor, offsets: Sequence[int] | None = None) -> torch.Tensor:
    """[B, T] credit: each claim's tokens get its value minus the mean value of the same key's
    claims in its group (every claim of that key by any sample of the prompt, itself included).
    Keys claimed once in a group get 0. Claims are in response-token offsets; `offsets[i]` is the
    column of row i's first response token in the [B, T] layout (0: the layout is the responses).
    Zero outside the response mask. Accumulates in float64."""
    B, T = response_mask.shape
    if len(spans) != B:
        raise ValueError(f"span_credit_advantage: {len(spans)} span lists for a batch of {B}")
    groups = group_index.tolist()
    values: dict[tuple[int, str], list[float]] = defaultdict(list)
    for i, row in enumerate(spans):
        for _, _, key, v in row:
            values[(groups[i], key)].append(v)
    credit = torch.zeros(B, T, dtype=torch.float64)
    for i, row in enumerate(spans):
        at = offsets[i] if offsets is not None else 0
        for first, stop, key, v in row:
            same = values[(groups[i], key)]
            if len(same) < 2:
                continue
            credit[i, at + first:min(at + stop, T)] += v - sum(same) / len(same)
    return (credit * response_mask.double()).to(torch.float32)


def token_char_ends(tokenizer, ids: Sequence[int], text: str) -> list[int] | None:
    """Where each response token's text ends in `text` (the completion's text, which may start
    with a prefill the tokens do not hold and end before a trailing stop token or string), or None
    when the tokens' decoding cannot be lined up with it. One decode per token; where pieces do not
    join to the whole (a character split over byte-level tokens), the decodes of growing prefixes."""
    ids = list(ids)
    if not ids:
        return None
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    whole = tokenizer.decode(ids, skip_special_tokens=False)
    if "".join(pieces) == whole:
        ends, n = [], 0
        for p in pieces:
            n += len(p)
            ends.append(n)
    else:
        ends, top = [], 0
        for t in range(len(ids)):
            top = max(top, len(tokenizer.decode(ids[: t + 1], skip_special_tokens=False)))
            ends.append(top)
    # the text is prefill + a prefix of the decoded tokens: find the prefill's length
    for offset in sorted({0, len(text) - len(whole), len(text) - ends[-2] if len(ends) > 1 else 0}):
        if 0 <= offset <= len(text) and whole.startswith(text[offset:]):
            return [offset + e for e in ends]
    return None
