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
from trl.trainer.utils import add_fused_lm_head

from mpo.data.collator import PreferenceCollator
from mpo.data.images import tile_budget
from mpo.data.template import normalize_question
from mpo.fused_head import compact_lm_head
from mpo.generation import GenerationRequest

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
    """Summed log π(response | prompt) of every response, in one right-padded batch.

    The N rows show the same image(s): the vision tower runs once and its features serve every row (as
    the trainer's vision once), and the LM head runs only at response positions, in chunks (TRL's
    fused head, added by :class:`RewardScorer`): no [N, length, vocabulary] logits tensor.
    """
    encoded = [encode(processor, request, r) for r in responses]
    width = max(len(p) + len(c) for p, c, _ in encoded)
    ids = torch.full((len(encoded), width), processor.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    shift_labels = torch.full_like(ids, -100)  # token t + 1 is scored at position t
    for row, (prompt, chosen, _) in enumerate(encoded):
        ids[row, : len(prompt) + len(chosen)] = torch.tensor(prompt + chosen)
        mask[row, : len(prompt) + len(chosen)] = 1
        shift_labels[row, len(prompt) - 1 : len(prompt) + len(chosen) - 1] = torch.tensor(chosen)
    kwargs = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
    tiles = encoded[0][2]  # every row shows the request's images
    if tiles is not None:
        features = model.model.get_image_features(
            pixel_values=tiles.to(model.device, model.dtype), return_dict=True
        )
        features.pooler_output = features.pooler_output.repeat(len(encoded), 1, 1)
        kwargs["mm_encoder_outputs"] = {"image": features}
    with compact_lm_head():
        out = model(**kwargs, shift_labels=shift_labels.to(model.device), use_cache=False, fused_lm_head=True)
    scored = shift_labels.to(out.log_probs.device) != -100
    return (out.log_probs.float() * scored).sum(dim=1).tolist()


class RewardScorer:
    """Scores responses by β · (log π − log π_ref) (see the module docstring)."""

    def __init__(self, policy, reference, processor, beta: float = DEFAULT_BETA) -> None:
        for model in (policy, reference):
            add_fused_lm_head(model, outputs=("log_probs",))
        self.policy, self.reference, self.processor, self.beta = (
            policy.eval(),
            reference.eval(),
            processor,
            beta,
        )

    def score(self, request: GenerationRequest, responses: list[str]) -> list[float]:
        policy = response_logps(self.policy, self.processor, request, responses)
        reference = response_logps(self.reference, self.processor, request, responses)
        return [self.beta * (p - r) for p, r in zip(policy, reference, strict=True)]
