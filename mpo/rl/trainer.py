"""GSPOTrainer: trl.GRPOTrainer (trl 1.16) on InternVL with this project's prompts, rollouts and checkpoints.

GSPO itself is TRL's: ``importance_sampling_level="sequence"`` with ``loss_type="grpo"`` computes
s_i(θ) = exp(mean_t(log π_θ − log π_θold)) per sequence and the clipped objective
(1/G) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i) (:mod:`mpo.rl.config`). What changes against
the parent, and nothing else:

- **prompts** (:meth:`GSPOTrainer._tokenize_prompts`): TRL would render the chat template of the processor and
  tile through the processor's own call. Here each row's prompt ids and tiles are those of the MPO collator
  (:meth:`mpo.data.collator.PreferenceCollator.encode_prompt`: the family's template, its tiling, the token
  layout with leading special ids), so a question is asked under RL byte for byte as under MPO and
  evaluation. The rows carry their files as ``image_paths``, so TRL's own image branches stay off; the tiles
  are attached to the scored batch with ``num_tiles`` (:meth:`_generate_and_score_completions`), which
  TRL 1.16 already slices per sample for InternVL's tile-indexed ``pixel_values``, and handed to the passes
  TRL makes inside its scoring (old and reference log-probs, :meth:`_get_per_token_logps_and_entropies`);
  a batch without images runs the vision tower on a blank tile there (:func:`vision_on_a_blank_tile`, the
  collators' blank-tile rule), so ranks with and without images run the same modules under ZeRO-3;
- **rollouts** without vLLM (:meth:`_generate_single_turn`): the prompt-sharing prefill of the pair builder
  (:meth:`mpo.generation.TransformersBackend.prefill`): each distinct prompt, its vision tower included, runs
  once, and its ``num_generations`` samples continue from copies of its KV cache, instead of TRL's one row per
  sample. With vLLM (TRL's colocate or server mode) the prompt goes as vLLM's InternVL processor expects it
  (one context token per image, the images alongside) and the training pass uses the expanded ids;
- **checkpoints**: staged and renamed into place, resumed through ``from_pretrained``
  (:class:`mpo.checkpointing.NativeResumeMixin`), with ``mpo_config.json`` (stage ``gspo``) in every saved
  folder, as `mpo train` writes it; TRL's GRPO card is not written (the project's card is the publishing
  layer's, from that record).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from accelerate.logging import get_logger
from peft import PeftModel
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from mpo import runtime
from mpo.checkpointing import NativeResumeMixin, write_run_config
from mpo.data.collator import PreferenceCollator
from mpo.data.images import blank_tile, load_visuals
from mpo.data.template import IMAGE_PLACEHOLDER, leading_special_ids
from mpo.errors import UserError
from mpo.generation import TransformersBackend
from mpo.models import families
from mpo.rl.config import GSPOConfig
from mpo.rl.rewards import reward_funcs as make_reward_funcs

logger = get_logger(__name__)
STAGE = "gspo"  # mpo_config.json's "stage": what the model card and `mpo push` read


def same_prompt_runs(keys: list[str]) -> list[int]:
    """Lengths of the runs of equal consecutive keys (TRL's sampler puts a prompt's copies together)."""
    runs: list[int] = []
    for i, key in enumerate(keys):
        if i and key == keys[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def cut_at_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> list[list[int]]:
    """Each row of sampled ids up to and including its first end-of-sequence token (all of it when none)."""
    out = []
    for row in completion_ids.tolist():
        end = next((i for i, t in enumerate(row) if t in eos_ids), len(row) - 1)
        out.append(row[: end + 1])
    return out


@contextmanager
def vision_on_a_blank_tile(model, image_processor, first_only: bool = False) -> Iterator[None]:
    """The blank-tile rule (:func:`mpo.data.layout.tiles_or_blank`) for the batches without images that TRL
    scores: while active, every forward of ``model`` (the unwrapped InternVL; with ``first_only`` the first
    forward only: the prefill of a generation, the one forward that runs the tower) runs the vision tower on
    one blank tile between the token embedding and the language model, where a batch with images runs it,
    and adds 0 x its features to the embeddings. The numbers do not change; every rank runs the same modules
    in the same order, which ZeRO-3's collective parameter gathers need (a rank that skipped the tower would
    leave the others waiting in it), and the tower's gradients are zeros, not missing."""
    internvl = (model.get_base_model() if isinstance(model, PeftModel) else model).model
    tile = blank_tile(image_processor)

    def run_the_tower(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if first_only:
            handle.remove()
        embeds = kwargs["inputs_embeds"]
        features = internvl.get_image_features(
            pixel_values=tile.to(embeds.device, internvl.dtype), return_dict=True
        ).pooler_output
        kwargs["inputs_embeds"] = embeds + 0.0 * features.sum()
        return args, kwargs

    # first among the language model's pre-hooks: before ZeRO-3's own records the module in its trace of the
    # step's module order, which must be the same on every rank (DeepSpeed 0.19 checks it)
    handle = internvl.language_model.register_forward_pre_hook(run_the_tower, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


class GSPOTrainer(NativeResumeMixin, GRPOTrainer):
    """GSPO (the online stage of InternVL3.5's Cascade RL) on InternVL, derived from ``trl.GRPOTrainer``."""

    _tag_names = ["trl", "gspo", "mpo", "internvl"]
    _name = "GSPO"

    def __init__(self, model, reward_funcs=None, args: GSPOConfig | None = None, **kwargs) -> None:
        """``reward_funcs`` default to the ones ``args.reward_funcs`` names (:mod:`mpo.rl.rewards`)."""
        args = args or GSPOConfig(output_dir="gspo_output")
        if reward_funcs is None:
            reward_funcs = make_reward_funcs(
                args.reward_funcs, style=args.answer_style, check_reasoning=args.check_reasoning
            )
        self._rows: list[dict] | None = None  # the rows of the batch being rolled out and scored
        self._vision: tuple[torch.Tensor, list[int], list[int]] | None = None  # its tiles, per row
        self._encoded: dict[str, tuple[list[int], torch.Tensor | None]] = {}  # its prompts, by question key
        self.run_config: dict = {}  # extra sections of mpo_config.json (mpo rl adds model, data, queries)
        super().__init__(model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.collator = PreferenceCollator(self.processing_class)
        self._refuse_trl_rollouts_on_shards_for_text_rows()

    def _refuse_trl_rollouts_on_shards_for_text_rows(self) -> None:
        """TRL's rollouts (``shared_prefill: false``) on ZeRO-3 shards (``ds3_gather_for_generation: false``)
        cannot take questions without images: transformers' ``generate`` gives DeepSpeed (0.19) different
        module orders on a rank without images and one with them, and the job hangs. Refused when the data
        have such questions, with the two settings that run them."""
        sharded = is_deepspeed_zero3_enabled() and not self.args.ds3_gather_for_generation
        if not sharded or self.use_vllm or self.args.shared_prefill or self.train_dataset is None:
            return
        text = [
            source
            for source, files in zip(
                self.train_dataset["source"], self.train_dataset["image_paths"], strict=True
            )
            if not files
        ]
        if text:
            raise UserError(
                f"{text[0]}: a question without images ({len(text)} in all), with shared_prefill false and "
                "ds3_gather_for_generation false under ZeRO-3: TRL's rollouts on sharded weights hang on it; "
                "set shared_prefill true (the default) or ds3_gather_for_generation true (the default)"
            )

    # ---- prompts: the MPO collator's ids and tiles --------------------------------------------------
    def _encode_rows(self, rows: list[dict]) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Prompt ids and tiles of each row, each distinct question of the batch encoded once."""
        cache = self._encoded
        for row in rows:
            if row["key"] not in cache:
                cache[row["key"]] = self.collator.encode_prompt(row)
        return [cache[r["key"]][0] for r in rows], [cache[r["key"]][1] for r in rows]

    def _tokenize_prompts(self, prompts: list):
        """The batch's prompt ids (:meth:`PreferenceCollator.encode_prompt`), no images for TRL's processor
        (TRL 1.16 would run the processor's template and tiling on them), no multimodal fields."""
        ids, tiles = self._encode_rows(self._rows)
        present = [t for t in tiles if t is not None]
        device = self.accelerator.device
        self._vision = (
            (torch.cat(present).to(device), [0 if t is None else len(t) for t in tiles], self._image_counts())
            if present
            else None
        )
        return ids, None, {}

    def _image_counts(self) -> list[int]:
        return [len(r["video_frames"]) or len(r["image_paths"]) for r in self._rows]

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        """TRL's rollout and scoring of ``inputs``, the prompts and tiles of this project (module docstring)."""
        self._rows, self._vision, self._encoded = inputs, None, {}
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rows, self._encoded = None, {}
        if self._vision is not None:
            output["pixel_values"], output["num_tiles"], output["num_images"] = self._vision
        self._vision = None
        return output

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):
        """TRL's per-token log-probs; inside the scoring of a rollout (old / reference log-probs) with the
        batch's tiles, which TRL 1.16 looks for only in its own processor's output. A batch without images
        runs the vision tower on a blank tile (:func:`vision_on_a_blank_tile`), as every rank must under
        ZeRO-3."""
        if kwargs.get("pixel_values") is None and self._vision is not None:
            kwargs["pixel_values"], kwargs["num_tiles"], kwargs["num_images"] = self._vision
        score = super()._get_per_token_logps_and_entropies
        if kwargs.get("pixel_values") is not None:
            return score(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        unwrapped = runtime.unwrapped(self.accelerator, model)
        with vision_on_a_blank_tile(unwrapped, self.processing_class.image_processor):
            return score(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    # ---- rollouts ---------------------------------------------------------------------------------
    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        if self.use_vllm:
            return super()._generate_single_turn(*self._vllm_prompts(), {}, num_generations)
        with self._blank_tile_on_shards():
            if not self.args.shared_prefill:  # TRL's path: one row per sample, the tiles of every row
                fields = {"pixel_values": self._vision[0]} if self._vision is not None else {}
                return super()._generate_single_turn(prompt_ids, None, fields, num_generations)
            return self._shared_prefill_rollouts(prompt_ids), None

    def _blank_tile_on_shards(self) -> AbstractContextManager:
        """Generation on ZeRO-3 shards (``ds3_gather_for_generation: false``) gathers each module's shards
        collectively in every forward: a batch without images runs the vision tower on a blank tile in its
        prefill, where batches with images on other ranks run it (with the weights gathered for generation,
        the default, no rank waits on another and nothing is added)."""
        if (
            self._vision is not None
            or self.args.ds3_gather_for_generation
            or not is_deepspeed_zero3_enabled()
        ):
            return nullcontext()
        unwrapped = runtime.unwrapped(self.accelerator, self.model_wrapped)
        return vision_on_a_blank_tile(unwrapped, self.processing_class.image_processor, first_only=True)

    def _shared_prefill_rollouts(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Sample the batch's completions with the pair builder's prefill: each run of one prompt's copies
        prefilled once (tiles included), its samples from copies of the KV cache. Runs of unequal length
        (a group split over ranks) fall back to one prefill per row."""
        runs = same_prompt_runs([r["key"] for r in self._rows])
        n = runs[0] if len(set(runs)) == 1 else 1
        firsts = list(range(0, len(prompt_ids), n))
        tokenizer = self.processing_class.tokenizer
        width = max(len(prompt_ids[i]) for i in firsts)
        ids = torch.full((len(firsts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(firsts):  # left-padded, as generate and the prefill expect
            ids[row, width - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
            mask[row, width - len(prompt_ids[i]) :] = 1
        device = self.accelerator.device
        enc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        tiles = self._encode_rows([self._rows[i] for i in firsts])[1]
        present = [t for t in tiles if t is not None]
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):
            training = unwrapped.training
            backend = TransformersBackend(unwrapped, self.processing_class, progress=False)  # eval mode
            try:
                pixel_values = torch.cat(present).to(device, unwrapped.dtype) if present else None
                out = unwrapped.generate(
                    **backend.prefill(enc, pixel_values, n), generation_config=self.generation_config
                )
            finally:
                unwrapped.train(training)
        return cut_at_eos(out[:, width:].cpu(), self.eos_token_ids)

    def _vllm_prompts(self) -> tuple[list[list[int]], list[list] | None]:
        """The prompts as vLLM's InternVL processor takes them: the same template, one context token per
        image (vLLM tiles each image and expands it), and the images. The rows' tile budget must be the
        checkpoint processor's, which TRL 1.16 gives vLLM (it has no per-prompt processor arguments)."""
        family = families.of_processor(self.processing_class)
        tokenizer = self.processing_class.tokenizer
        budget = getattr(self.processing_class.image_processor, "max_patches", None)
        ids, images = [], []
        for row in self._rows:
            if row["image_paths"] and budget is not None and row["max_dynamic_patch"] != budget:
                raise ValueError(
                    f"{row['source']}: {row['max_dynamic_patch']} tiles per image, but vLLM tiles with the "
                    f"processor's max_patches={budget}: set the subset's max_dynamic_patch to it"
                )
            text = family.template.prompt_text(row["prompt"]).replace(
                IMAGE_PLACEHOLDER, family.tokens.img_context
            )
            ids.append(
                leading_special_ids(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
            )
            images.append(
                load_visuals(row["image_paths"], row["video_frames"]) if row["image_paths"] else None
            )
        return ids, (images if any(images) else None)

    # ---- checkpoints: run record and card as mpo train writes them -------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        # TRL 1.16's GRPOTrainer._save_checkpoint writes TRL's card into output_dir, then calls transformers'.
        # Here transformers' runs directly (staged, mpo.checkpointing); the card is written by _save.
        with self.staged_checkpoint():
            Trainer._save_checkpoint(self, model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Model, processor and ``mpo_config.json`` (stage ``gspo``: what the model card reads)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            base = getattr(self.model, "name_or_path", None)
            record = {"stage": STAGE, "base_model": base, **self.run_config}
            write_run_config(output_dir or self.args.output_dir, self.args, record)

    def create_model_card(self, *args, **kwargs) -> None:
        """Not TRL's GRPO card: the project's card is written by the publishing layer (`mpo rl` adds its
        callback) from ``mpo_config.json`` and the trainer state."""
