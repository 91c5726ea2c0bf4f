"""Generation backends behind one interface, shared by the preference-data builders and evaluation.

A backend turns :class:`GenerationRequest` s (a question with ``<image>`` placeholders, its image
files, and optionally the start of the answer to continue) into ``n`` sampled responses each.
``transformers`` is the default and runs everywhere; ``vllm`` is used when it imports (and a GPU is
present) for generation at scale.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from mpo.data.images import load_visuals, tile_budget, tiles_for, tiling_kwargs
from mpo.data.template import IMAGE_PLACEHOLDER, expand_images, leading_special_ids, normalize_question
from mpo.models import families


@dataclass
class GenerationRequest:
    """One prompt: ``question`` holds one ``<image>`` per entry of ``images``; ``prefix`` is the
    beginning of the assistant's answer that the model continues (empty for a fresh answer).

    ``seed`` (optional) makes this request's samples depend only on it, not on the other requests
    batched with it nor on ``SamplingParams.seed``: sharded, resumed and differently batched runs
    then sample the same responses (up to floating-point differences of padded batches).
    """

    question: str
    images: list[str] = field(default_factory=list)
    max_dynamic_patch: int = 12
    prefix: str = ""
    seed: int | None = None
    frames: list[int] = field(default_factory=list)  # a video file (images[0]): the frames shown
    video: bool = False  # images are video frames: one tile each, shown as Frame{i}: <image>

    def pictures(self) -> list:
        """The decoded images shown (the files of ``images``, or the ``frames`` of the video file)."""
        return load_visuals(self.images, self.frames)

    def num_images(self) -> int:
        return len(self.frames) if self.frames else len(self.images)

    def tiles_per_image(self) -> int:
        """At most this many tiles per image: the budget shared by the images, one per video frame."""
        return 1 if self.video else tile_budget(self.max_dynamic_patch, self.num_images())


@dataclass
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy decoding (then ``n`` must be 1)."""

    n: int = 1
    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy decoding (temperature 0) gives one response: set n=1 or temperature > 0")


class GenerationBackend(Protocol):
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[str]]:
        """``params.n`` responses (the continuation only, without ``prefix``) for every request."""
        ...


class _RowSampler(LogitsProcessor):
    """Samples every row's next token by inverse CDF with its own stream of uniforms (drawn up front
    from a ``torch.Generator`` seeded per row; temperature, top-k, top-p applied first) and leaves
    only that token possible. A row's tokens then depend on its seed and its logits alone, not on
    the rows batched with it.

    The CDF runs over the top-k candidates only, in vocabulary order. Every other token has
    probability 0 and cannot be drawn, so the pick is the one the whole-vocabulary CDF makes (up to
    the rounding of the softmax's sum), at the cost of a top-k instead of a dozen passes over
    rows x 151k logits.
    """

    def __init__(self, seeds: list[int], params: SamplingParams) -> None:
        self.uniforms = torch.stack(
            [
                torch.rand(
                    params.max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64
                )
                for s in seeds
            ]
        )
        self.step = 0
        self.top_k = params.top_k
        self.warpers = [TemperatureLogitsWarper(params.temperature)]
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens top-k keeps, in vocabulary order, and their scores; as ``TopKLogitsWarper``, every
        token tied with the k-th score is kept. Rows with fewer ties than the most tied row get extra
        columns with score -inf. Without top-k: every token."""
        rows, vocab = scores.shape
        k = self.top_k
        if not k or k >= vocab:
            return torch.arange(vocab, device=scores.device).expand(rows, vocab), scores
        top = scores.topk(min(k + 1, vocab), dim=-1)
        kth = top.values[:, k - 1 : k]  # [rows, 1]
        untied = k + 1 > vocab or bool((top.values[:, k] < kth[:, 0]).all())
        tied = k if untied else int((scores >= kth).sum(-1).max())
        tokens = (top.indices[:, :k] if untied else scores.topk(tied, dim=-1).indices).sort(dim=-1).values
        kept = scores.gather(1, tokens)
        return tokens, kept.masked_fill(kept < kth, float("-inf"))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens, logits = self.candidates(scores)  # [rows, c]
        for warp in self.warpers:  # temperature keeps the order, so top-k before it keeps the same set
            logits = warp(input_ids, logits)
        cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1).cpu()
        u = self.uniforms[:, min(self.step, self.uniforms.shape[1] - 1), None] * cdf[:, -1:]
        self.step += 1
        picked = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        chosen = tokens.gather(1, picked.to(tokens.device))
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


def question_seed(seed: int, key: str) -> int:
    """A 62-bit seed for one question (pair building, sampled evaluation), from the run's seed and the
    question's key."""
    return int(hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()[:15], 16)


def row_seed(seed: int, k: int) -> int:
    """The seed of the ``k``-th sample of a request seeded with ``seed``."""
    return (seed * 1_000_003 + k) % (2**63)


class TransformersBackend:
    """Batched ``model.generate`` with left padding, on the model's device."""

    def __init__(self, model, processor, batch_size: int = 8, progress: bool = True) -> None:
        self.model, self.processor, self.batch_size, self.progress = (
            model.eval(),
            processor,
            batch_size,
            progress,
        )

    def _encode(self, req: GenerationRequest) -> tuple[str, torch.Tensor | None]:
        family = families.of_processor(self.processor)
        if not req.images:
            return family.template.prompt_text(req.question) + req.prefix, None
        pixel_values, tiles = tiles_for(self.processor.image_processor, req.pictures(), req.tiles_per_image())
        question = normalize_question(req.question, req.num_images(), video=req.video)
        prompt = family.template.prompt_text(question)
        text = expand_images(prompt, tiles, self.processor.image_seq_length, family.tokens) + req.prefix
        return text, pixel_values

    def tokenize(self, texts: list[str]):
        """Left-padded ids of prompts, each led by the tokenizer's own leading special tokens (as in training)."""
        tokenizer = self.processor.tokenizer
        lead = "".join(tokenizer.convert_ids_to_tokens(leading_special_ids(tokenizer)))
        return tokenizer(
            [lead + t for t in texts],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )

    @torch.no_grad()
    def prefill(self, enc, pixel_values: torch.Tensor | None, n: int) -> dict:
        """Runs each prompt once and gives ``generate`` inputs for ``n`` samples of it.

        ``num_return_sequences=n`` would copy every prompt ``n`` times *before* the forward pass, so the
        prompt (up to 13 x 256 image tokens) would run through the LLM ``n`` times. Here all but the
        prompt's last token run once per prompt; the ``n`` samples continue from copies of that
        cache (``Cache.batch_repeat_interleave``), and ``generate`` runs the last token for each copy.
        The position ids are those ``generate`` gives a left-padded row (``cumsum(mask) - 1``, pads 0),
        so the cached keys are the ones it would have computed. Prompt tokens through the LLM:
        B·L instead of B·n·L.
        """
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [B, L], left-padded
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        # the cache generate would build (its layer types: full or sliding-window attention)
        cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        cache_argument = _cache_argument(self.model.model.forward)
        self.model.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            pixel_values=pixel_values,
            use_cache=True,
            **{cache_argument: cache},
        )
        cache.batch_repeat_interleave(n)
        return {
            "input_ids": ids.repeat_interleave(n, dim=0),  # [B·n, L]: row b·n + k is sample k of prompt b
            "attention_mask": mask.repeat_interleave(n, dim=0),
            cache_argument: cache,
        }

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[str]]:
        tokenizer = self.processor.tokenizer
        out: list[list[str]] = []
        batches = range(0, len(requests), self.batch_size)
        for start in tqdm(batches, desc="generating", disable=not self.progress or len(batches) < 2):
            batch = requests[start : start + self.batch_size]
            encoded = [self._encode(r) for r in batch]
            enc = self.tokenize([t for t, _ in encoded]).to(self.model.device)
            tiles = [p for _, p in encoded if p is not None]
            pixel_values = torch.cat(tiles).to(self.model.device, self.model.dtype) if tiles else None
            torch.manual_seed(params.seed + start)
            sampled = params.temperature > 0
            choice: dict = (
                dict(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
                if sampled
                else dict(do_sample=False)
            )
            if sampled and any(r.seed is not None for r in batch):
                # Per-request seeds: _RowSampler picks each token and leaves only it possible, so
                # greedy decoding then takes it (generate's own sampling would draw from the RNG).
                seeds = [params.seed + start + i if r.seed is None else r.seed for i, r in enumerate(batch)]
                sampler = _RowSampler([row_seed(s, k) for s in seeds for k in range(params.n)], params)
                choice = dict(do_sample=False, logits_processor=LogitsProcessorList([sampler]))
            gen = self.model.generate(
                **self.prefill(enc, pixel_values, params.n),
                **choice,
                max_new_tokens=params.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [[t.strip() for t in texts[i : i + params.n]] for i in range(0, len(texts), params.n)]
        return out


def _cache_argument(forward) -> str:
    """The name under which ``forward`` (and ``generate``) take a KV cache: ``cache`` in transformers 5.24
    (there ``past_key_values`` is a deprecated alias), ``past_key_values`` in releases before it."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class VLLMBackend:
    """vLLM offline inference for native InternVL checkpoints (GPU, optional extra ``vllm``).

    The prompt is the checkpoint family's template (as in training); each ``<image>`` becomes the family's
    image context token, which vLLM's InternVL processor expands with the image's tiles. Each prompt carries
    its own tile budget (``mm_processor_kwargs``: the request's ``max_dynamic_patch`` shared by its images,
    one tile per video frame), as the transformers backend tiles it. ``tensor_parallel_size`` splits the
    model over GPUs (a 78B model needs 4-8), ``data_parallel_size`` runs replicas (or run one `--shard` per
    GPU group), ``max_images_per_prompt`` is vLLM's ``limit_mm_per_prompt``.
    """

    def __init__(
        self,
        model_path: str,
        max_dynamic_patch: int = 12,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        max_images_per_prompt: int = 8,
        **llm_kwargs,
    ) -> None:
        from vllm import LLM

        from mpo.models.loading import checkpoint_family

        self.family = checkpoint_family(model_path)
        if data_parallel_size > 1:
            llm_kwargs["data_parallel_size"] = data_parallel_size
        self.llm = LLM(
            model=str(model_path),
            tensor_parallel_size=tensor_parallel_size,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            mm_processor_kwargs=tiling_kwargs(max_dynamic_patch),
            **llm_kwargs,
        )

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[list[str]]:
        from vllm import SamplingParams as VParams

        vparams = VParams(
            n=params.n,
            temperature=params.temperature,
            top_k=params.top_k if params.temperature else -1,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
        )
        prompts, per_request = [], []
        for r in requests:
            per_request.append(vparams if r.seed is None else vparams.clone())
            if r.seed is not None:
                per_request[-1].seed = r.seed
            question = normalize_question(r.question, r.num_images(), video=r.video)
            prompt = self.family.template.prompt_text(question)
            text = prompt.replace(IMAGE_PLACEHOLDER, self.family.tokens.img_context) + r.prefix
            prompt: dict = {"prompt": text}
            if r.images:
                prompt["multi_modal_data"] = {"image": r.pictures()}
                prompt["mm_processor_kwargs"] = tiling_kwargs(r.tiles_per_image())
            prompts.append(prompt)
        results = self.llm.generate(prompts, per_request)
        return [[o.text.strip() for o in res.outputs] for res in results]


def vllm_options(args) -> dict:
    """:class:`VLLMBackend`'s engine options from the flags of :func:`add_vllm_arguments`."""
    return {
        "tensor_parallel_size": args.tensor_parallel_size,
        "data_parallel_size": args.data_parallel_size,
        "max_images_per_prompt": args.max_images_per_prompt,
    }


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def resolve_backend_name(name: str) -> str:
    """The generation backend ``name`` stands for: ``auto`` is vLLM when it imports and a GPU is present,
    else transformers."""
    if name == "auto":
        return "vllm" if vllm_available() else "transformers"
    return name


def make_backend(
    name: str,
    model_path: str,
    *,
    batch_size: int = 8,
    max_dynamic_patch: int = 12,
    vllm_options: dict | None = None,
) -> GenerationBackend:
    """The backend :func:`resolve_backend_name` picks, loaded from ``model_path``; ``vllm_options``
    (``tensor_parallel_size``, ``data_parallel_size``, ``max_images_per_prompt``) go to :class:`VLLMBackend`."""
    name = resolve_backend_name(name)
    if name == "vllm":
        return VLLMBackend(model_path, max_dynamic_patch=max_dynamic_patch, **(vllm_options or {}))
    if name == "transformers":
        from mpo.models.loading import load_model, load_processor

        model = load_model(model_path, training=False)
        if torch.cuda.is_available():
            model = model.cuda()
        return TransformersBackend(model, load_processor(model_path), batch_size=batch_size)
    raise ValueError(f"unknown generation backend {name!r}: expected auto, transformers or vllm")
