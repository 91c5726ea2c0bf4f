"""mpo.scoring.sequence_logps on a model outside any trainer: three [prompt | response] sequences, packed
into one row or one per row, under sdpa and sdpa_varlen, against log-softmax of the full logits of each
sequence run alone."""

from __future__ import annotations

import pytest
import torch

from mpo.data.layout import assemble, plain_segment
from mpo.models.loading import load_model
from mpo.scoring import scored_sequences, sequence_logps, with_fused_head

SEQUENCES = [([5, 9, 13, 2], [40, 41, 42]), ([7, 8], [50, 51, 52, 53]), ([11, 12, 13], [60])]


def _alone(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.tensor(response)[:, None]).sum()


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_varlen"])
@pytest.mark.parametrize("packed", [False, True])
def test_sequence_logps_of_any_layout_match_each_sequence_alone(tiny_model, kernel, packed):
    segments = [plain_segment(p, r, score=i, group=i) for i, (p, r) in enumerate(SEQUENCES)]
    rows = [segments] if packed else [[s] for s in segments]
    batch = {**assemble(rows, pad_id=0, layout="packed" if packed else "plain"), "num_sequences": 3}
    batch["pixel_values"] = None
    model = with_fused_head(load_model(tiny_model, attn_implementation=kernel, layout=batch["layout"]).eval())
    with torch.no_grad():
        logps, lengths = sequence_logps(model, batch)
        plain = load_model(tiny_model).eval()
        expected = torch.stack([_alone(plain, p, r) for p, r in SEQUENCES])
    assert lengths.tolist() == [len(r) for _, r in SEQUENCES]
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)


def test_a_preference_batch_scores_two_sequences_per_pair():
    assert (
        scored_sequences({"num_pairs": 3}) == 6
        and scored_sequences({"num_sequences": 5, "num_pairs": 1}) == 5
    )
