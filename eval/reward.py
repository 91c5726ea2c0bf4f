"""The DPO implicit reward as a best-of-N scorer (``mpo eval --aggregate best-of-n``, the default scorer).

For a response y to prompt x, with the evaluated (MPO) checkpoint as π and its reference (the SFT
checkpoint it was trained from, ``--reference``) as π_ref:

    r(x, y) = β · (log π(y | x) − log π_ref(y | x))

where log π(y | x) is the summed log-probability of the response tokens, ``y<|im_end|>``, after
the prompt, encoded exactly as training encodes a chosen response (:class:`mpo.data.collator.
PreferenceCollator`), so it is the quantity the DPO term of MPO was trained on. Each model scores
all N responses of an item in one batched forward pass, its vision tower once. β only scales the reward (the pick does not
depend on it); it is kept so that the stored scores read as the training logs' ``rewards/*``.

Why this is the default scorer: it needs no third model, costs two forward passes per item (no
generation), is deterministic, and is what MPO itself learns to rank; the judge scorer
(:class:`eval.judge.JudgeScorer`) needs a judge model strong enough to check an answer, which a
tiny or small checkpoint is not.
"""

from __future__ import annotations

import torch

from mpo.data.collator import PreferenceCollator
from mpo.data.images import tile_budget
from mpo.data.layout import assemble, plain_segment
from mpo.data.template import normalize_question
from mpo.generation import GenerationRequest
from mpo.losses import implicit_rewards
from mpo.scoring import sequence_logps, with_fused_head

DEFAULT_BETA = 0.1


def encode(
    processor, request: GenerationRequest, response: str
) -> tuple[list[int], list[int], torch.Tensor | None]:
    """(prompt ids, response ids, tiles) of one response, as training encodes a chosen response."""
    per_image = 1 if request.video else tile_budget(request.max_dynamic_patch, request.num_images())
    record = {
        "question": normalize_question(request.question, request.num_images(), video=request.video),
        "image_paths": list(request.images),
        "video_frames": list(request.frames) or None,
        "max_dynamic_patch": per_image,
        "chosen": response,
        "rejected": "",
        "source": "eval:0",
    }
    prompt, chosen, _, tiles = PreferenceCollator(processor).encode(record)
    return prompt, chosen, tiles


@torch.no_grad()
def response_logps(model, processor, request: GenerationRequest, responses: list[str]) -> list[float]:
    """Summed log π(response | prompt) of every response: one row each, scored by
    :func:`mpo.scoring.sequence_logps` (the trainer's routine). The N rows show the same image(s): the vision
    tower runs once and its features serve every row (as the trainer's vision once), and the LM head runs
    only at response positions, in chunks: no [N, length, vocabulary] logits tensor."""
    encoded = [encode(processor, request, r) for r in responses]
    rows = [
        [plain_segment(prompt, chosen, score=i, group=i)] for i, (prompt, chosen, _) in enumerate(encoded)
    ]
    batch = assemble(rows, processor.tokenizer.pad_token_id, "plain")
    tiles = encoded[0][2]  # every row shows the request's images
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["pixel_values"] = None if tiles is None else tiles.to(model.device, model.dtype)
    batch["feature_repeats"] = len(encoded) if tiles is not None else 1
    batch["num_sequences"] = len(encoded)
    logps, _ = sequence_logps(model, batch)
    return logps.float().tolist()


class RewardScorer:
    """Scores responses by β · (log π − log π_ref) (see the module docstring)."""

    def __init__(self, policy, reference, processor, beta: float = DEFAULT_BETA) -> None:
        self.policy, self.reference = with_fused_head(policy).eval(), with_fused_head(reference).eval()
        self.processor, self.beta = processor, beta

    def score(self, request: GenerationRequest, responses: list[str]) -> list[float]:
        policy = torch.tensor(response_logps(self.policy, self.processor, request, responses))
        reference = torch.tensor(response_logps(self.reference, self.processor, request, responses))
        return implicit_rewards(policy, reference, self.beta).tolist()
