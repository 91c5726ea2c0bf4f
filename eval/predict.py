"""Generate the predictions of an evaluation: the prompts, the backend, the samples and the journal lines.

Each finished batch is appended to ``predictions.jsonl`` (a :class:`mpo.journal.Journal`) before the
next one starts, so a killed run resumes where it stopped. Sampled runs seed each item from the run's
seed, its benchmark and its index, and keep one of its samples by the run's aggregate
(:mod:`eval.scaling`); best-of-n scores them with the reward or the judge scorer.
"""

from __future__ import annotations

from tqdm import tqdm

from eval.benchmarks import EvalItem
from eval.config import DEFAULT_BATCH_SIZE, EvalConfig
from eval.prompting import make_request
from eval.scaling import aggregate_record
from eval.scoring import score
from mpo.data.meta import BadRows
from mpo.errors import DataError
from mpo.generation import GenerationBackend, GenerationRequest, SamplingParams, question_seed
from mpo.journal import Journal


def item_key(benchmark: str, index: str) -> tuple[str, str]:
    """An item's key among the predictions: its benchmark and its index (as text)."""
    return benchmark, str(index)


def prediction_key(record: dict) -> tuple[str, str]:
    """A prediction's key in ``predictions.jsonl`` (a :class:`mpo.journal.Journal`)."""
    return item_key(record["benchmark"], record["index"])


def item_seed(seed: int, item: EvalItem) -> int:
    """The sampling seed of one item: from the run's seed, its benchmark and its index."""
    return question_seed(seed, f"{item.benchmark}\x00{item.index}")


def build_requests(items: list[EvalItem], cot: bool, max_dynamic_patch: int, bad: BadRows):
    """The items whose prompt can be built, and their requests; the others go to ``bad``."""
    kept, requests = [], {}
    for it in items:
        try:
            requests[item_key(it.benchmark, it.index)] = make_request(it, cot, max_dynamic_patch)
        except DataError as err:
            bad.handle(err)
            continue
        kept.append(it)
    return kept, requests


def _load_backend(config: EvalConfig) -> tuple[GenerationBackend, int]:
    """The generation backend (``config.backend`` when it is a ready one) and the prompts per call."""
    backend, batch_size = config.backend, config.batch_size
    if isinstance(backend, str):
        from mpo.generation import make_backend, resolve_backend_name

        name = resolve_backend_name(backend)
        batch_size = batch_size or DEFAULT_BATCH_SIZE.get(name, 16)
        backend = make_backend(
            name,
            config.model,
            batch_size=batch_size,
            max_dynamic_patch=config.max_dynamic_patch,
            vllm_options=config.vllm_options,
        )
    return backend, batch_size or DEFAULT_BATCH_SIZE["transformers"]


def _judge_scorer(config: EvalConfig, batch_size: int):
    from eval.judge import JudgeScorer

    judge_backend = config.judge_backend
    if judge_backend is None:
        from mpo.generation import make_backend, resolve_backend_name

        judge_backend = make_backend(
            resolve_backend_name(config.backend_kind),
            config.judge_model,
            batch_size=batch_size,
            max_dynamic_patch=config.max_dynamic_patch,
        )
    return JudgeScorer(judge_backend)


def _reward_scorer(config: EvalConfig, backend: GenerationBackend):
    import torch

    from eval.reward import RewardScorer
    from mpo.models.loading import load_model, load_processor

    policy = getattr(backend, "model", None)
    if policy is None:  # vLLM holds its own copy; score with a transformers one
        policy = load_model(config.model, training=False)
    ref = load_model(config.reference, training=False)
    if torch.cuda.is_available():
        policy, ref = policy.cuda(), ref.cuda()
    return RewardScorer(policy, ref, load_processor(config.model), config.sampling["beta"])


def make_scorer(config: EvalConfig, backend: GenerationBackend, batch_size: int):
    """The best-of-n scorer: a ready object as given, else the reward or the judge scorer."""
    scorer = config.sampling["scorer"] if config.scorer is None else config.scorer
    if not isinstance(scorer, str):
        return scorer
    if scorer == "judge":
        return _judge_scorer(config, batch_size)
    return _reward_scorer(config, backend)


def _prediction(
    config: EvalConfig, it: EvalItem, samples: list[str], request: GenerationRequest, scorer
) -> dict:
    """The journal line of one item: its labels, then its response(s) and score."""
    record = {
        "benchmark": it.benchmark,
        "index": it.index,
        "category": it.category,
        "question": it.question,
        "answer": it.answer,
    }
    if config.sampled:
        if len(samples) != config.num_samples:
            raise RuntimeError(f"backend returned {len(samples)} samples, expected {config.num_samples}")
        scores = scorer.score(request, samples) if config.aggregate == "best-of-n" else None
        record.update(aggregate_record(it, samples, config.cot, config.aggregate, scores))
    else:
        response = samples[0] if samples else ""
        record.update(response=response, **score(it, response, config.cot))
    return record


def predict(
    config: EvalConfig,
    pending: list[EvalItem],
    requests: dict[tuple[str, str], GenerationRequest],
    journal: Journal,
) -> int:
    """Generate, score and journal every pending item, a batch at a time; returns the batch size used."""
    backend, batch_size = _load_backend(config)
    params = SamplingParams(
        n=config.num_samples,
        temperature=config.sampling["temperature"],
        max_new_tokens=config.new_tokens,
        seed=config.seed,
    )
    if config.sampled:
        for it in pending:  # each item's samples depend on --seed and the item alone
            requests[item_key(it.benchmark, it.index)].seed = item_seed(config.seed, it)
    scorer = (
        make_scorer(config, backend, batch_size)
        if config.aggregate == "best-of-n" and config.sampled
        else None
    )
    progress = config.progress
    bar = tqdm(total=len(pending), desc="evaluating", disable=None if progress is None else not progress)
    with journal:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            chunk_requests = [requests[item_key(it.benchmark, it.index)] for it in chunk]
            responses = backend.generate(chunk_requests, params)
            if len(responses) != len(chunk):
                raise RuntimeError(f"backend returned {len(responses)} results for {len(chunk)} prompts")
            for it, request, samples in zip(chunk, chunk_requests, responses, strict=True):
                journal.append(_prediction(config, it, samples, request, scorer), sync=False)
            journal.sync()
            bar.update(len(chunk))
    bar.close()
    return batch_size
