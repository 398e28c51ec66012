"""Which training images are one patient, so that `threshold: auto` leaves them out of each other's search.

Calibration scores each training image against the rest of the training set as a stand-in for a novel patient;
the rest must not hold the same patient's other films, and nothing else may be left out (two children's chest
films are not a sequence because their file numbers are consecutive). So when the data names its patients
(a column, or the file-name pattern a split reads them from), calibration groups by exactly what the
patient-disjoint split groups by (`synthgen.sources.groups`). File-name numbering (`sequence`) is inferred
only for data without such a column: video frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from synthgen.errors import SynthgenError
from synthgen.sources.groups import SEQUENCE, check_split_column, source_groups

AUTO = "auto"
PATIENT_COLUMNS = ("patient_id",)  # looked for when nothing names the group column


@dataclass(frozen=True)
class Grouping:
    """Group per training key (a key not listed is its own group) and where the grouping came from."""

    by: str
    name_pattern: str | None
    origin: str
    groups: dict[str, str]
    ungrouped: int = 0
    _members: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key, group in self.groups.items():
            self._members.setdefault(group, set()).add(key)

    def __call__(self, key: str) -> set[str]:
        """`key` and the other images of its group: what its leave-one-out search must not see."""
        group = self.groups.get(key)
        return {key} if group is None else {key, *self._members[group]}

    def info(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "name_pattern": self.name_pattern,
            "from": self.origin,
            "n_groups": len(self._members),
            "ungrouped_images": self.ungrouped,
        }


def training_groups(source: object, group_by: str = AUTO, name_pattern: str | None = None) -> Grouping | None:
    """The grouping calibration uses, or None for sequences inferred from file-name numbering.

    `group_by`: a metadata column, `sequence`, or `auto`: the column the source's `split:` reads (with its
    `name_pattern`), else a `patient_id` column, else sequences. `name_pattern` (regex on the file name) gives
    the group where the column is empty; by default the split's.
    """
    group_by = (group_by or AUTO).strip()
    if group_by == SEQUENCE:
        return None
    if group_by != AUTO:
        check_split_column(source, group_by, "audit.group_by")  # raises naming the field when the column is missing
        return _grouping(source, group_by, name_pattern or _split_pattern(source, group_by), "audit.group_by")
    split = getattr(getattr(source, "spec", None), "split", None)
    if split is not None:
        if split.by == SEQUENCE:
            return None
        return _grouping(source, split.by, name_pattern or split.name_pattern, "the data's split.by")
    for column in PATIENT_COLUMNS:
        try:
            check_split_column(source, column, "audit.group_by")
        except SynthgenError:
            continue
        return _grouping(source, column, name_pattern, f"the data's {column} column")
    return None


def _split_pattern(source: object, column: str) -> str | None:
    """The split's `name_pattern` when the split groups by the same column."""
    split = getattr(getattr(source, "spec", None), "split", None)
    return split.name_pattern if split is not None and split.by == column else None


def _grouping(source: object, by: str, name_pattern: str | None, origin: str) -> Grouping:
    groups, ungrouped = source_groups(source, by, name_pattern)
    return Grouping(by, name_pattern, origin, groups, ungrouped)
