"""RULER-style synthetic retrieval tasks (Hsieh et al. 2024): several keys, several values,
variable tracking and common words, built from a long text for a tokenizer.

Each prompt ends with a question and the start of the answer sentence, so the answer is its
continuation. A prompt is scored twice after one prefill: by the fraction of the answer's
items in a greedy reply (RULER's measure), and by the teacher-forced log-likelihood of the
answer, which still moves where a small model's reply is wrong with exact attention too.
"""

from __future__ import annotations

import copy
import inspect
import random
import re
import statistics
import string
import time
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.models import EVAL_CONFIG, check_length, check_plan_setting, patch_setting
from hyperattn.eval.needle import setting_label
from hyperattn.heads import HeadPlan
from hyperattn.integrations.transformers import patch_model

ANSWER_MARGIN = 16  # greedy tokens beyond the answer's length
NUM_KEYS = 4  # multikey: needles with different keys, one of them asked
NUM_VALUES = 4  # multivalue: numbers of the asked key
VARIABLE_HOPS = 4  # variable_tracking: assignments after the first of a chain
VARIABLE_CHAINS = 2  # variable_tracking: the asked chain and distractors
NUM_COMMON = 10  # common_words: the words asked for
COMMON_REPEATS = 30  # common_words: occurrences of a common word in long lists (RULER's)
RARE_REPEATS = 3  # common_words: occurrences of another word in long lists (RULER's)

MAGIC = "The special magic number for {key} is {number}."
WORD = re.compile(r"(?<![\w'’-])[a-z]{4,10}(?![\w'’-])")  # not a part of "wouldn't" or "pre-empt"


@dataclass(frozen=True)
class Haystack:
    """A tokenized text, the positions of its tokens that start a sentence (a token that begins
    with whitespace after one that ends with . ? or !), and its words (lowercase, 4 to 10
    letters, whole, sorted) for keys and word lists."""

    ids: list[int]
    sentence_starts: list[int]
    words: list[str]


def load_haystack(tokenizer, text: str) -> Haystack:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    pieces = {i: tokenizer.decode([i]) for i in set(ids)}
    ends = {i for i, piece in pieces.items() if piece.rstrip().endswith((".", "?", "!"))}
    spaced = {i for i, piece in pieces.items() if piece[:1].isspace()}
    starts = [p for p in range(1, len(ids)) if ids[p - 1] in ends and ids[p] in spaced]
    return Haystack(ids, starts, sorted(set(WORD.findall(text))))


@dataclass(frozen=True)
class Sample:
    """A prompt (token ids) continued by ``answer`` (``answer_ids``), which lists ``items``;
    ``needles``: the statements (or words) the prompt must contain to be answerable."""

    task: str
    prompt: list[int]
    answer: str
    answer_ids: list[int]
    items: list[str]
    needles: list[str]

    @property
    def max_new_tokens(self) -> int:
        return len(self.answer_ids) + ANSWER_MARGIN


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _answer(tokenizer, items: list[str]) -> tuple[str, list[int]]:
    answer = " " + ", ".join(items)
    return answer, _tokens(tokenizer, answer)


def _nearest_start(starts: list[int], position: int, low: int, high: int) -> int:
    """The sentence start in [low, high] nearest to ``position``, or ``position`` if none is there."""
    index = bisect_left(starts, position)
    near = [s for s in starts[max(index - 1, 0):index + 1] if low <= s <= high]
    return min(near, key=lambda s: abs(s - position), default=position)


def hide(task: str, tokenizer, haystack: Haystack, length: int, rng: random.Random, preamble: str,
         statements: list[str], question: str, items: list[str]) -> Sample:
    """A prompt of ``length`` tokens less the answer and ``ANSWER_MARGIN``: ``preamble``, a stretch
    of the haystack from a random sentence start with ``statements`` at random sentence starts
    (in their order), then ``question``."""
    answer, answer_ids = _answer(tokenizer, items)
    pieces = [_tokens(tokenizer, " " + statement) for statement in statements]
    head, tail = _tokens(tokenizer, preamble), _tokens(tokenizer, question)
    body = length - len(answer_ids) - ANSWER_MARGIN - len(head) - len(tail) - sum(map(len, pieces))
    if body <= 0 or len(haystack.ids) < body:
        raise ValueError(f"cannot build a {length}-token {task} prompt from a haystack of {len(haystack.ids)} tokens")
    starts = haystack.sentence_starts[:bisect_right(haystack.sentence_starts, len(haystack.ids) - body)]
    start = rng.choice(starts) if starts else 0
    end = start + body
    positions = sorted(_nearest_start(haystack.sentence_starts, start + round(rng.random() * body), start, end)
                       for _ in pieces)
    prompt, last = list(head), start
    for position, piece in zip(positions, pieces):
        prompt += haystack.ids[last:position] + piece
        last = position
    prompt += haystack.ids[last:end] + tail
    return Sample(task, prompt, answer, answer_ids, items, statements)


def multikey(tokenizer, haystack: Haystack, length: int, rng: random.Random) -> Sample:
    """``NUM_KEYS`` magic numbers of different keys (two words joined by a hyphen); one key is asked."""
    words = rng.sample(haystack.words, 2 * NUM_KEYS)
    keys = [f"{a}-{b}" for a, b in zip(words[::2], words[1::2])]
    numbers = [str(n) for n in rng.sample(range(10 ** 6, 10 ** 7), NUM_KEYS)]
    asked = rng.randrange(NUM_KEYS)
    key = keys[asked]
    return hide("multikey", tokenizer, haystack, length, rng,
                "Some special magic numbers are hidden in the following text. Remember them: you will be asked "
                "for one of them.\n\n",
                [MAGIC.format(key=k, number=n) for k, n in zip(keys, numbers)],
                f"\n\nQuestion: What is the special magic number for {key} mentioned in the text above?\n"
                f"Answer: The special magic number for {key} is", [numbers[asked]])


def multivalue(tokenizer, haystack: Haystack, length: int, rng: random.Random) -> Sample:
    """``NUM_VALUES`` magic numbers of one key, all asked in their order in the text."""
    key = "-".join(rng.sample(haystack.words, 2))
    numbers = [str(n) for n in rng.sample(range(10 ** 6, 10 ** 7), NUM_VALUES)]
    return hide("multivalue", tokenizer, haystack, length, rng,
                "Some special magic numbers are hidden in the following text. Remember them: you will be asked "
                "for them.\n\n",
                [MAGIC.format(key=key, number=n) for n in numbers],
                f"\n\nQuestion: What are all the special magic numbers for {key} mentioned in the text above? "
                f"Give them in the order they appear, separated by commas.\n"
                f"Answer: The special magic numbers for {key} are", numbers)


def variable_tracking(tokenizer, haystack: Haystack, length: int, rng: random.Random) -> Sample:
    """``VARIABLE_CHAINS`` chains "VAR A = value", "VAR B = VAR A", ... of ``VARIABLE_HOPS`` hops,
    interleaved; the variables of the first chain are asked, in their order."""
    names = []
    while len(names) < VARIABLE_CHAINS * (VARIABLE_HOPS + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    values = rng.sample(range(10 ** 4, 10 ** 5), VARIABLE_CHAINS)
    chains = [names[c * (VARIABLE_HOPS + 1):(c + 1) * (VARIABLE_HOPS + 1)] for c in range(VARIABLE_CHAINS)]
    assignments = [[f"VAR {chain[0]} = {value} ."] + [f"VAR {b} = VAR {a} ." for a, b in zip(chain, chain[1:])]
                   for chain, value in zip(chains, values)]
    order = [c for c in range(VARIABLE_CHAINS) for _ in range(VARIABLE_HOPS + 1)]
    rng.shuffle(order)
    statements = [assignments[c].pop(0) for c in order]
    return hide("variable_tracking", tokenizer, haystack, length, rng,
                "Memorize the variable assignments hidden in the following text. You will be asked about them.\n\n",
                statements,
                f"\n\nQuestion: Which variables are assigned the value {values[0]}, directly or through other "
                f"variables? Give them in the order they are assigned, separated by commas.\n"
                f"Answer: The variables assigned the value {values[0]} are", chains[0])


def common_words(tokenizer, haystack: Haystack, length: int, rng: random.Random) -> Sample:
    """A list of the haystack's words in which ``NUM_COMMON`` words occur ``COMMON_REPEATS`` times
    and the others ``RARE_REPEATS`` times (fewer in short lists); the common ones are asked,
    most frequent first, ties in alphabetical order."""
    words = rng.sample(haystack.words, len(haystack.words))
    common = sorted(words[:NUM_COMMON])  # they tie, so the canonical order is alphabetical
    preamble = "Below is a list of words. Some of them occur more often than others: remember which.\n\n"
    question = (f"\n\nQuestion: What are the {NUM_COMMON} most common words in the list above? Give them from the "
                f"most to the least frequent, words equally frequent in alphabetical order, separated by commas.\n"
                f"Answer: The {NUM_COMMON} most common words are")
    answer, answer_ids = _answer(tokenizer, common)
    head, tail = _tokens(tokenizer, preamble), _tokens(tokenizer, question)
    budget = length - len(answer_ids) - ANSWER_MARGIN - len(head) - len(tail)
    word_ids = {w: _tokens(tokenizer, " " + w) for w in common}
    entries = budget * NUM_COMMON // sum(map(len, word_ids.values()))  # list entries that fit, about
    repeats = min(COMMON_REPEATS, max(2, entries // COMMON_REPEATS))
    rare_repeats = max(1, repeats * RARE_REPEATS // COMMON_REPEATS)
    listed = [w for w in common for _ in range(repeats)]
    used = repeats * sum(map(len, word_ids.values()))
    if used > budget:
        raise ValueError(f"a {length}-token common_words prompt has no room for {NUM_COMMON} words {repeats} times")
    for word in words[NUM_COMMON:]:
        word_ids[word] = _tokens(tokenizer, " " + word)
        used += rare_repeats * len(word_ids[word])
        if used > budget:
            break
        listed += [word] * rare_repeats
    rng.shuffle(listed)
    prompt = head + [token for word in listed for token in word_ids[word]] + tail
    return Sample("common_words", prompt, answer, answer_ids, common, common)


TASKS = {"multikey": multikey, "multivalue": multivalue, "variable_tracking": variable_tracking,
         "common_words": common_words}


def recovered(reply: str, items: list[str]) -> float:
    """Fraction of ``items`` that are words of ``reply``, ignoring case and order (RULER's
    string_match_all, by whole words)."""
    words = set(re.findall(r"\w+", reply.lower()))
    return sum(item.lower() in words for item in items) / len(items)


def _cache_keyword(model) -> str:
    """transformers 5 renamed the KV cache argument ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill(model, sample: Sample):
    """(KV cache of the prompt's tokens but its last, the forward's name for the cache argument)."""
    from transformers import DynamicCache

    keyword = _cache_keyword(model)
    prompt = torch.tensor([sample.prompt[:-1]], device=next(model.parameters()).device)
    cache = DynamicCache(config=model.config)
    model(prompt, use_cache=True, logits_to_keep=1, **{keyword: cache})
    return cache, keyword


def _forced_logprob(model, sample: Sample, cache, keyword: str) -> float:
    """Mean log-prob (nats) of the answer's tokens, teacher-forced after the prefill ``cache`` (which grows)."""
    device = next(model.parameters()).device
    forced = torch.tensor([sample.prompt[-1:] + sample.answer_ids[:-1]], device=device)
    logits = model(forced, use_cache=True, **{keyword: cache}).logits[0].float()
    targets = torch.tensor(sample.answer_ids, device=device)[:, None]
    return logits.log_softmax(-1).gather(1, targets).mean().item()


@torch.no_grad()
def answer_logprob(model, sample: Sample) -> float:
    """The answer's mean log-prob per token in nats, as ``run_sample`` measures it, without the reply."""
    return _forced_logprob(model, sample, *_prefill(model, sample))


@torch.no_grad()
def run_sample(model, tokenizer, sample: Sample) -> tuple[str, float]:
    """(greedy reply, mean log-prob of the answer's tokens in nats), both continuing one prefill of
    the prompt: the answer is teacher-forced against a copy of the prompt's KV cache."""
    cache, keyword = _prefill(model, sample)
    logprob = _forced_logprob(model, sample, copy.deepcopy(cache), keyword)
    prompt = torch.tensor([sample.prompt], device=next(model.parameters()).device)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=sample.max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.eos_token_id, **{keyword: cache})
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True), logprob


def build_samples(tokenizer, text: str, tasks: list[str], lengths: list[int], samples: int,
                  seed: int | str) -> dict[tuple[str, int, int], Sample]:
    """``samples`` prompts per (task, length), keyed (task, length, index); each from its own seed
    (``seed`` with the key: another ``seed``, even a string, gives other prompts)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the tasks are {list(TASKS)}")
    haystack = load_haystack(tokenizer, text)
    return {(task, length, index): TASKS[task](tokenizer, haystack, length,
                                               random.Random(f"{seed}/{task}/{length}/{index}"))
            for task in tasks for length in lengths for index in range(samples)}


def evaluate_ruler(model, tokenizer, text: str, tasks: list[str] = tuple(TASKS), lengths: list[int] = (4096,),
                   samples: int = 5, layer_specs: list[str] = ("last:0", "all"),
                   config: HyperAttentionConfig | None = None, seed: int = 0, plan: HeadPlan | None = None) -> dict:
    """Score and answer log-likelihood of ``samples`` prompts per (layer setting, task, length);
    every setting sees the same prompts (``"last:0"`` = exact; ``"plan"``: the head plan ``plan``).

    Returns {"rows": one per prompt and setting, "summary": one per (setting, task, length)
    with the mean score, the mean log-prob per answer token and its change against exact
    attention on the same prompts (mean, std, min, max)}."""
    config = config or EVAL_CONFIG
    check_plan_setting(layer_specs, plan)
    for length in lengths:
        check_length(model, length)
    prompts = build_samples(tokenizer, text, tasks, lengths, samples, seed)
    jobs = [(spec, key) for spec in layer_specs for key in prompts]
    rows = []
    for spec, (task, length, index) in tqdm(jobs, desc="ruler", unit="prompt"):
        patched = patch_setting(model, spec, config, plan, seed)
        sample = prompts[(task, length, index)]
        start = time.perf_counter()
        reply, logprob = run_sample(model, tokenizer, sample)
        rows.append(dict(layers=spec, num_patched=len(patched), task=task, length=length, sample=index,
                         prompt_tokens=len(sample.prompt), answer=sample.answer.strip(), reply=reply.strip(),
                         score=recovered(reply, sample.items), answer_logprob=logprob,
                         seconds=time.perf_counter() - start))
    patch_model(model, "last:0", config)  # leave the model exact
    return dict(tasks=list(tasks), lengths=list(lengths), samples=samples, layer_specs=list(layer_specs), seed=seed,
                config=asdict(config), rows=rows, summary=summarize(rows))


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (setting, task, length), in the order of ``rows``; the changes of the
    log-prob are against the first setting that patched no layer (None without one)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["layers"], row["task"], row["length"]), []).append(row)
    exact_spec = next((r["layers"] for r in rows if r["num_patched"] == 0), None)
    exact = {(r["task"], r["length"], r["sample"]): r["answer_logprob"] for r in rows if r["layers"] == exact_spec}
    summary = []
    for (spec, task, length), group in groups.items():
        change = dict.fromkeys(("logprob_change", "change_std", "change_min", "change_max"))
        if exact:
            changes = [r["answer_logprob"] - exact[(task, length, r["sample"])] for r in group]
            change = dict(logprob_change=statistics.fmean(changes), change_std=statistics.pstdev(changes),
                          change_min=min(changes), change_max=max(changes))
        summary.append(dict(
            layers=spec, num_patched=group[0]["num_patched"], task=task, length=length, samples=len(group),
            mean_score=statistics.fmean(r["score"] for r in group),
            mean_logprob=statistics.fmean(r["answer_logprob"] for r in group), **change,
            mean_seconds=statistics.fmean(r["seconds"] for r in group)))
    return summary


def format_summary(result: dict) -> str:
    """A table: mean score and log-prob per answer token, and the log-prob's change against exact
    attention (mean, std, min, max over the prompts)."""
    lines = [f"{'setting':<30} {'task':<18} {'length':>6} {'score':>6} {'logprob':>8} {'vs exact':>9} {'std':>6} "
             f"{'min':>7} {'max':>7} {'s/prompt':>8}"]
    for s in result["summary"]:
        if s["logprob_change"] is None:
            change = f"{'-':>9} {'-':>6} {'-':>7} {'-':>7}"
        else:
            change = (f"{s['logprob_change']:+9.3f} {s['change_std']:6.3f} {s['change_min']:+7.3f} "
                      f"{s['change_max']:+7.3f}")
        lines.append(f"{setting_label(s['layers']):<30} {s['task']:<18} {s['length']:>6} {s['mean_score']:6.2f} "
                     f"{s['mean_logprob']:8.3f} {change} {s['mean_seconds']:8.1f}")
    return "\n".join(lines)
