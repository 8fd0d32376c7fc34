"""Data of the `text-styles` benchmark: templated English sentence tasks crossed with
"languages" made by deterministic text transforms.

Each task has labels, each label a list of key phrases; sentences come from many templates and
generic fillers, so train and test sentences differ. A task's sentences are generated once (in
plain English, deduplicated) and split into train / validation / test; every language renders
the same split, so no test sentence, in any language, is in any train set.

Example:
    >>> from mergezoo.eval.benchmarks.text_styles.data import LANGUAGES, cell_dataset
    >>> LANGUAGES["piglatin"]("the match was great")
    'ethay atchmay asway eatgray'
    >>> ds = cell_dataset("topic", "reversed", "test", per_label=(8, 4, 4), seed=0)
    >>> sorted(set(ds["label_name"]))
    ['food', 'politics', 'science', 'sports']
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from functools import lru_cache

from datasets import ClassLabel, Dataset, Features, Value

from mergezoo.errors import BenchmarkDataError
from mergezoo.eval.benchmarks.text_styles.vocab import TASKS, TaskSpec

SPLITS = ("train", "validation", "test")

_VOWELS = set("aeiou")
_CIPHER_TABLE = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[::-1])


def plain(text: str) -> str:
    """Identity: the base model's own language."""
    return text


def reversed_words(text: str) -> str:
    """Word order reversed: ``"a b c" -> "c b a"``."""
    return " ".join(text.split()[::-1])


def _pig_word(word: str) -> str:
    if not word.isalpha():
        return word
    if word[0] in _VOWELS:
        return word + "way"
    i = 0
    while i < len(word) and word[i] not in _VOWELS:
        i += 1
    return word[i:] + word[:i] + "ay"


def pig_latin(text: str) -> str:
    """Pig latin: leading consonants moved to the end plus "ay"; vowel-initial words get "way"."""
    return " ".join(_pig_word(w) for w in text.split())


def atbash(text: str) -> str:
    """Letter cipher: a<->z, b<->y, ... (its own inverse)."""
    return text.translate(_CIPHER_TABLE)


#: Language name -> transform of a plain, lowercase, space-separated sentence.
LANGUAGES: dict[str, Callable[[str], str]] = {
    "plain": plain,
    "reversed": reversed_words,
    "piglatin": pig_latin,
    "cipher": atbash,
}


def _task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise BenchmarkDataError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def _fill(template: str, fillers: dict[str, list[str]], rng: random.Random) -> str:
    out = template
    for slot, words in fillers.items():
        key = "{" + slot + "}"
        while key in out:
            out = out.replace(key, rng.choice(words), 1)
    return out


@lru_cache(maxsize=64)
def task_sentences(task: str, per_label: tuple[int, int, int],
                   seed: int = 0) -> dict[str, tuple[tuple[str, int, int], ...]]:
    """Plain sentences of ``task`` per split: ``{split: ((sentence, label, source_id), ...)}``.

    ``per_label`` is the number of sentences per label in (train, validation, test). Sentences
    are unique across all splits of the task; ``source_id`` numbers them uniquely across tasks
    (``task index * 1_000_000 + n``). Deterministic for a seed.
    """
    spec = _task(task)
    rng = random.Random(f"text-styles/{task}/{seed}")
    need = sum(per_label)
    out: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}
    id_base = list(TASKS).index(task) * 1_000_000
    seen: set[str] = set()
    for label, keys in enumerate(spec.keys):
        fillers = {**spec.fillers, "key": list(keys)}
        sentences: list[str] = []
        attempts = 0
        while len(sentences) < need:
            attempts += 1
            if attempts > 200 * need:
                raise BenchmarkDataError(
                    f"task {task!r} label {spec.labels[label]!r}: cannot make {need} distinct "
                    "sentences; lower the size")
            text = _fill(rng.choice(spec.templates), fillers, rng).lower()
            text = " ".join(text.replace(",", " ,").replace(".", " .").replace("?", " ?").split())
            if text not in seen:
                seen.add(text)
                sentences.append(text)
        start = 0
        for split, n in zip(SPLITS, per_label):
            out[split] += [(s, label, id_base + len(seen) - need + start + k)
                           for k, s in enumerate(sentences[start:start + n])]
            start += n
    for split in SPLITS:
        rng.shuffle(out[split])
    return {s: tuple(v) for s, v in out.items()}


def cell_dataset(task: str, language: str, split: str, per_label: tuple[int, int, int],
                 seed: int = 0) -> Dataset:
    """The (task, language) cell's ``split`` as a Dataset: text, label, source_id (shared by
    every language's rendering of a sentence), label_name, plain, task, language."""
    if language not in LANGUAGES:
        raise BenchmarkDataError(f"unknown language {language!r}; expected {sorted(LANGUAGES)}")
    if split not in SPLITS:
        raise BenchmarkDataError(f"unknown split {split!r}; expected one of {SPLITS}")
    spec = _task(task)
    rows = task_sentences(task, tuple(per_label), seed)[split]
    transform = LANGUAGES[language]
    features = Features({
        "text": Value("string"),
        "label": ClassLabel(names=list(spec.labels)),
        "source_id": Value("int64"),
        "label_name": Value("string"),
        "plain": Value("string"),
        "task": Value("string"),
        "language": Value("string"),
    })
    return Dataset.from_dict({
        "text": [transform(s) for s, _, _ in rows],
        "label": [lab for _, lab, _ in rows],
        "source_id": [i for _, _, i in rows],
        "label_name": [spec.labels[lab] for _, lab, _ in rows],
        "plain": [s for s, _, _ in rows],
        "task": [task] * len(rows),
        "language": [language] * len(rows),
    }, features=features)
