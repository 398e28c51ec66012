"""Groups of images that must stay on one side of a split: a patient (any metadata column) or a video sequence.

Images of one patient or one video are near-copies of each other for a model, so a validation loss, a holdout
metric or a membership test that has a patient on both sides measures memorisation, not generalisation. One
implementation serves everyone who cuts data in two: training's validation split (`split_by`), `synthgen split`,
and the audit's threshold calibration, which leaves a training image's own group out of its leave-one-out
search (`source_groups`: the split's column and name pattern; `SequenceNeighbours` for video sequences). It
lives with the readers so that training and the audit share it without importing each other.

Sequences are read from file names: keys that differ only in their last number (seq12_frame0895.jpg and
seq12_frame0979.jpg) are one sequence when few share that stem. When a whole data set is numbered that way
(cvcclinicdb__1.jpg ... __612.jpg), global image vectors tell whether the numbers follow videos (consecutive
images alike): if so the numbering is cut into shots where consecutive images stop looking alike (like video
shot detection); if not (independent images), every image is its own group. Without vectors, runs of `window`
consecutive numbers stand in for shots.

Sides are decided per group from sha256(seed, group): the same groups and seed give the same split whatever
the order the images are read in.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SEQUENCE = "sequence"  # `split_by: sequence`: groups inferred from file-name numbering
_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")
_OWN = "\0image:"  # prefix of the group of an image without a group value: itself


def split_key(key: str) -> tuple[tuple[str, str], int] | None:
    """(text before and after the last number, the number) of a key, or None when it holds no number."""
    found = _LAST_NUMBER.match(key)
    return None if found is None else ((found.group(1), found.group(3)), int(found.group(2)))


def _row_dots(vectors: np.ndarray, rows_a: list[int], rows_b: list[int]) -> np.ndarray:
    """Inner products of paired rows (no matrix product: one row pair at a time, vectorised)."""
    return np.einsum("ij,ij->i", np.asarray(vectors[rows_a], np.float32), np.asarray(vectors[rows_b], np.float32))


class SequenceNeighbours:
    """Keys that look like frames of one sequence: same text around the last number.

    A small group of such keys is one sequence. In a big one (a whole data set numbered 1..n), `vectors`
    (global embeddings, rows aligned with `keys`) tell whether the numbering follows videos at all:
    consecutive images more alike than random pairs. If not (independent images), only the key itself is
    excluded. If so, a key's neighbours are its shot (cut where consecutive images stop looking alike),
    the shots either side, and the numbers within `window`. Without vectors: numbers within `window`.
    `group(key)` is the partition a split needs: the small sequence, the shot, or the image itself.
    """

    def __init__(
        self, keys: list[str], vectors: np.ndarray | None = None, *, window: int = 50, small_group: int | None = None
    ) -> None:
        self.window = window
        self.small_group = small_group if small_group is not None else max(20, len(keys) // 50)
        self._groups: dict[tuple[str, str], tuple[list[int], list[str]]] = {}
        self._span: dict[str, tuple[int, int]] = {}  # key -> [start, end) of its shots in its group
        self._part: dict[str, int | None] = {}  # key -> its part of its group for splits (None: not a video)
        parsed = [(split, key) for key in keys if (split := split_key(key)) is not None]
        for (stem, number), key in sorted(parsed):
            numbers, names = self._groups.setdefault(stem, ([], []))
            numbers.append(number)
            names.append(key)
        if vectors is not None:
            row = {key: i for i, key in enumerate(keys)}
            for numbers, names in self._groups.values():
                if len(names) > self.small_group:
                    self._segment(numbers, names, vectors, [row[name] for name in names])

    def _segment(self, numbers: list[int], names: list[str], vectors: np.ndarray, rows: list[int]) -> None:
        firsts, seconds = rows[:-1], rows[1:]
        steps = np.concatenate(
            [_row_dots(vectors, firsts[i : i + 4096], seconds[i : i + 4096]) for i in range(0, len(firsts), 4096)]
        )
        shuffled = np.random.default_rng(0).permutation(rows)[: min(len(rows), 2000)]
        chance = float(np.median(_row_dots(vectors, rows[: len(shuffled)], list(shuffled))))
        typical = float(np.median(steps))
        if typical - chance < 0.1:  # consecutive images no more alike than random ones: not sequences
            for i, name in enumerate(names):
                self._span[name] = (i, i + 1)
                self._part[name] = None
            return
        cut = steps < (chance + typical) / 2
        parts = _confident_parts(steps, cut, max(2, self.window // 3))
        shot = np.concatenate([[0], np.cumsum(cut)])
        starts = np.searchsorted(shot, np.arange(shot[-1] + 2), side="left")
        for i, name in enumerate(names):  # the shot, the shots either side, and numbers within the window
            low = min(int(starts[max(shot[i] - 1, 0)]), bisect.bisect_left(numbers, numbers[i] - self.window))
            high = max(
                int(starts[min(shot[i] + 2, shot[-1] + 1)]), bisect.bisect_right(numbers, numbers[i] + self.window)
            )
            self._span[name] = (low, high)
            self._part[name] = int(parts[i])

    def __call__(self, key: str) -> set[str]:
        """`key` and the keys of its presumed sequence."""
        parsed = split_key(key)
        if parsed is None or parsed[0] not in self._groups:
            return {key}
        numbers, names = self._groups[parsed[0]]
        if len(names) <= self.small_group:
            return {key, *names}
        if key in self._span:
            low, high = self._span[key]
            return {key, *names[low:high]}
        low = bisect.bisect_left(numbers, parsed[1] - self.window)
        high = bisect.bisect_right(numbers, parsed[1] + self.window)
        return {key, *names[low:high]}

    def group(self, key: str) -> str:
        """The one group `key` belongs to: its small sequence, its shot, its run of `window` numbers, or itself."""
        parsed = split_key(key)
        if parsed is None or parsed[0] not in self._groups:
            return _OWN + key
        (before, after), number = parsed
        stem = f"{before}#{after}"
        if len(self._groups[parsed[0]][1]) <= self.small_group:
            return stem
        if key in self._part:
            part = self._part[key]
            return _OWN + key if part is None else f"{stem}#shot{part}"
        return f"{stem}#run{number // self.window}"

    def big_stems(self) -> set[tuple[str, str]]:
        """Stems numbered like a whole data set (more keys than a small sequence): where vectors help."""
        return {stem for stem, (_, names) in self._groups.items() if len(names) > self.small_group}


def _confident_parts(steps: np.ndarray, cut: np.ndarray, min_shot: int) -> np.ndarray:
    """Part index per image for a partition: the shot cuts, most confident (least alike) first, each at least
    `min_shot` images from the ends and from every cut already taken.

    Calibration can afford every cut (it also leaves out the shots either side); a split cannot, since a
    spurious cut inside a video puts frames of one lesion on both sides. Cuts of thumbnails are noisy, so only
    the clearest survive: on CVC-ClinicDB (612 frames, 31 videos) they fall on the video boundaries.
    """
    taken: list[int] = []
    n = len(steps) + 1
    for i in np.argsort(steps, kind="stable"):
        position = int(i) + 1  # a cut between image i and i + 1
        if not cut[i] or position < min_shot or n - position < min_shot:
            continue
        if all(abs(position - other) >= min_shot for other in taken):
            taken.append(position)
    return np.searchsorted(np.sort(np.asarray(taken, dtype=np.int64)), np.arange(n), side="right")


def thumbnail_vector(image: Image.Image | np.ndarray, side: int = 12) -> np.ndarray:
    """A global image vector for shot detection: a `side`-pixel thumbnail, mean-centred, unit length.

    Consecutive video frames give nearly the same thumbnail; it needs no model weights, so training and
    `synthgen split` can tell videos from independent images on their own.
    """
    if isinstance(image, np.ndarray):  # (C, H, W) uint8, as training decodes them
        image = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    small = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX), dtype=np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def sequence_groups(keys: Sequence[str], vectors: np.ndarray | None = None, window: int = 50) -> list[str]:
    """The sequence group of every key (see `SequenceNeighbours.group`); `vectors` rows align with `keys`."""
    neighbours = SequenceNeighbours(list(keys), vectors, window=window)
    return [neighbours.group(key) for key in keys]


def name_group(pattern: re.Pattern[str] | None, key: str) -> str | None:
    """The first non-empty capture group (else the whole match) of `pattern` in `key`; None without a match."""
    match = pattern.search(key) if pattern is not None else None
    if match is None:
        return None
    return next((part for part in match.groups() if part), match.group(0))


def column_groups(
    values: Iterable[str | None], keys: Iterable[str], name_pattern: str | None = None
) -> tuple[list[str], int]:
    """Group per image from a metadata column; an empty value makes the image its own group (and is counted).

    `name_pattern` (a regex) reads the group from the key (file name) where the column is empty, for data sets
    that name the patient in the file name (NIH ChestX-ray14: 00000181_013.png is patient 00000181's 14th film);
    an empty value then counts as ungrouped only when the pattern does not match either.
    """
    pattern = re.compile(name_pattern) if name_pattern else None
    groups, ungrouped = [], 0
    for value, key in zip(values, keys, strict=True):
        if value is None or not str(value).strip():
            named = name_group(pattern, key)
            if named is not None:
                groups.append("\0name:" + named)
                continue
            groups.append(_OWN + key)
            ungrouped += 1
        else:
            groups.append(str(value).strip())
    return groups, ungrouped


def row_groups(
    root: Path, rows: Sequence[dict[str, str]], by: str, name_pattern: str | None = None
) -> tuple[list[str], int]:
    """The group of every imagefolder row (`file_name` relative to `root`) by column `by` or `sequence`.

    Returns the groups and how many rows had an empty value (each its own group). For `sequence`, a data set
    numbered as a whole gets thumbnails read so that videos are told from independent images.
    """
    keys = [row.get("file_name", "") for row in rows]
    if by == SEQUENCE:
        neighbours = SequenceNeighbours(keys)
        big = neighbours.big_stems()
        if big:  # a whole data set numbered 1..n: thumbnails tell videos from independent images
            neighbours = SequenceNeighbours(keys, _thumbnails(root, keys, big))
        return [neighbours.group(key) for key in keys], 0
    return column_groups((row.get(by, "") for row in rows), keys, name_pattern)


def _thumbnails(root: Path, keys: list[str], big: set) -> np.ndarray:
    """Thumbnail vectors of the images in big numbered groups (zeros elsewhere and for unreadable files)."""
    vectors = np.zeros((len(keys), 3 * 12 * 12), dtype=np.float32)
    for i, key in enumerate(keys):
        parsed = split_key(key)
        if parsed is None or parsed[0] not in big:
            continue
        try:
            with Image.open(root / key) as image:
                vectors[i] = thumbnail_vector(image)
        except Exception:  # noqa: BLE001 - PIL raises many types; an unreadable frame simply cuts its video
            continue
    return vectors


def group_rank(group: str, seed: int) -> int:
    """Where a group falls in the split order: a hash of (seed, group), so it depends on nothing else."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{group}".encode()).digest()[:8], "big")


def holdout_mask(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Which images go to the held-out side: whole groups, in `group_rank` order, as near `fraction` as they fit.

    A group is taken when it brings the held-out count nearer floor(n * fraction); groups too big to fit are
    passed over for smaller ones later in the order. No group is ever on both sides.
    """
    sizes = Counter(groups)
    target = int(len(groups) * fraction) if fraction > 0 else 0
    held: set[str] = set()
    count = 0
    for group in sorted(sizes, key=lambda g: (group_rank(g, seed), g)):
        if count >= target:
            break
        if abs(count + sizes[group] - target) < abs(count - target):
            held.add(group)
            count += sizes[group]
    return np.fromiter((group in held for group in groups), dtype=bool, count=len(groups))


def is_own_group(group: str) -> bool:
    """True for the group of an image that had no group value (its own)."""
    return group.startswith(_OWN)


def group_count(groups: Iterable[str]) -> int:
    return len(set(groups))


def check_split_column(source: object, column: str, field: str) -> str:
    """A `validate` line about `split_by`; raises `SynthgenError` naming `field` when the data lacks the column.

    An imagefolder's metadata rows are read without opening an image; other readers show their first sample.
    """
    from synthgen.errors import SynthgenError

    if column == SEQUENCE:
        return f"{field}: sequence (video frames inferred from file-name numbering stay on one side)"
    rows = getattr(source, "rows", None)
    if rows is None:
        first = next(iter(source), None)  # type: ignore[call-overload]
        rows = [first.metadata] if first is not None else []
    columns = sorted({name for row in rows for name in row})
    if column not in columns:
        description = getattr(source, "description", "the data")
        raise SynthgenError(
            f"{field}: {description} has no column {column!r} (columns: {', '.join(columns) or 'none'})"
        )
    values = [str(row.get(column) or "").strip() for row in rows]
    if len(rows) == 1 and getattr(source, "rows", None) is None:
        return f"{field}: {column} (validation split keeps each {column} on one side)"
    empty = sum(1 for value in values if not value)
    line = f"{field}: {len({v for v in values if v}):,} groups by {column}"
    return line + (f"; {empty:,} images without a value, each its own group" if empty else "")


def source_groups(source: object, by: str, name_pattern: str | None = None) -> tuple[dict[str, str], int]:
    """Key -> group of every image of a source by column `by` (+ `name_pattern`), as its split groups them, and
    how many images had no value (each its own group).

    An imagefolder's metadata rows are read without decoding an image; other readers are read once for the column.
    """
    rows, root, spec = (getattr(source, name, None) for name in ("rows", "root", "spec"))
    if rows is not None and root is not None:
        rows = rows[: getattr(spec, "limit", None)]
        key_column = getattr(spec, "key_column", None)
        keys = [row.get(key_column, "") if key_column else row.get("file_name", "") for row in rows]
        groups, ungrouped = row_groups(Path(root), rows, by, name_pattern)
    else:
        pairs = [(sample.key, sample.metadata.get(by)) for sample in source]  # type: ignore[attr-defined]
        keys = [key for key, _ in pairs]
        groups, ungrouped = column_groups((value for _, value in pairs), keys, name_pattern)
    return dict(zip(keys, groups, strict=True)), ungrouped
