"""The data checks `synthgen validate` (and so the build's preflight) makes, without writing anything.

For each data source a recipe uses: its named columns exist (the readers check that when they open), at least
one image decodes, a sample of images decodes (`SAMPLE_IMAGES` spread evenly over the set, all of them with
`deep`), and, for the training data, every recipe class matches labels present in it.

Unreadable images are a *warning* (the build and the audit skip them, as they always have), with the count and
the first reasons; only data where nothing decodes is an error. Classes are checked only against data that has
labels: captions-only data (no label column, or empty labels) is allowed and said so in a line.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.sources.base import Source
from synthgen.sources.open import open_readable, unreadable_note
from synthgen.sources.spec import SourceSpec

SAMPLE_IMAGES = 32  # decoded by a plain validate: cheap on any set, spread so a bad region shows up
WARNING = "warning: "  # lines that start with it are warnings (the CLI prints them on stderr)


def check_data(
    spec: SourceSpec,
    base_dir: Path | None,
    field: str,
    *,
    classes: Mapping[str, Sequence[str]] | None = None,
    deep: bool = False,
) -> list[str]:
    """Lines describing the data at recipe `field`; raises `SynthgenError` (naming the field) at a problem.

    `classes` (recipe class -> the data labels it stands for) are checked against the data's labels.
    """
    source = open_readable(spec, base_dir, field)
    labels = source.labels()
    counts = Counter(label for label in labels if label)
    images = f"{len(labels):,} image{'s' if len(labels) != 1 else ''}"
    if counts:
        lines = [f"{field}: {images} in {source.description}; labels: {_counts(counts)}"]
    else:
        lines = [f"{field}: {images} in {source.description}; no labels ({_why_unlabelled(spec)})"]
    if classes is not None:
        role = "training images" if field.startswith("model.") else f"{field} images"  # eval.test: not training
        lines.append(class_counts(classes, counts, len(labels) - sum(counts.values()), role))
    lines.append(_decode_line(source, field, len(labels), deep))
    return lines


def class_counts(
    classes: Mapping[str, Sequence[str]], counts: Counter[str], unlabelled: int = 0, role: str = "training images"
) -> str:
    """The `role` images behind each recipe class, as one line; an error for a class the data lacks."""
    if not counts:
        return "classes: not checked against the training data, which has no labels (the prompts alone steer them)"
    for name, wanted in classes.items():
        for label in wanted:
            if counts.get(label):
                continue
            mapped = list(wanted) != [name]
            where = f"classes.{name}.labels" if mapped else f"classes.{name}"
            hint = _closest(label, counts)
            fix = (
                f"did you mean `labels: [{hint}]`?"
                if mapped
                else f"name the class after one, or add `labels: [{hint}]`"
            )
            raise SynthgenError(
                f"{where}: no {role.removesuffix('s')} is labelled {label!r}; "
                f"the data's labels are {_counts(counts, '({})')}; {fix}"
            )
    parts = []
    for name, wanted in classes.items():
        mapped = "" if list(wanted) == [name] else f" ({', '.join(wanted)})"
        parts.append(f"{name} {sum(counts[label] for label in wanted):,}{mapped}")
    used = {label for wanted in classes.values() for label in wanted}
    rest = Counter({label: n for label, n in counts.items() if label not in used})
    line = f"{role} per class: " + ", ".join(parts)
    if rest:
        line += f"; labels no class generates: {_counts(rest)}"
    if unlabelled:
        line += f"; {unlabelled:,} unlabelled"
    return line


def _decode_line(source: Source, field: str, total: int, deep: bool) -> str:
    """Decode a sample (or everything) and say what failed: a warning, since readers skip such images."""
    tried, skipped = source.probe(None if deep else SAMPLE_IMAGES)
    scope = "all" if deep or tried >= total else f"a sample spread over the set; --deep decodes all {total:,}"
    if not skipped:
        return f"{field}: decoded {tried:,} of {total:,} images ({scope}): all readable"
    if len(skipped) >= tried:
        # open_readable found a readable image, so some decode: but none of those checked here did
        scope += "; none of these decoded"
    return (
        f"{WARNING}{field}: {len(skipped):,} of {tried:,} images checked cannot be read and will be skipped "
        f"({scope}): {unreadable_note(skipped)}"
    )


def _why_unlabelled(spec: SourceSpec) -> str:
    return "label_column: null" if not spec.label_column else f"nothing in a {spec.label_column!r} column"


def _counts(counts: Counter[str], form: str = "{}", limit: int = 12) -> str:
    """`a 510, b 199, ...` (or `a (510), ...`), most frequent first, at most `limit` labels."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{label} {form.format(f'{n:,}')}" for label, n in ordered[:limit])
    return shown + (f", and {len(ordered) - limit} more" if len(ordered) > limit else "")


def _closest(label: str, counts: Counter[str]) -> str:
    """The data label most like `label` (covid -> covid19), else the most frequent one."""
    match = difflib.get_close_matches(label, list(counts), n=1, cutoff=0.5)
    return match[0] if match else counts.most_common(1)[0][0]
