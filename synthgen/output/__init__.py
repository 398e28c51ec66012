"""Everything a build writes: the output folder's owner, shard writers, shard sets, manifest, card, preview.

`folder` (OutputFolder: `.synthgen/` state, markers, lock, ownership) · `writers` (Parquet and WebDataset
sample writers) · `shard_set` (all-or-nothing shards, completion markers) · `layout` (the shard layout a
resume must match) · `manifest` · `dataset_card` (README.md) · `preview` (preview.png) · `verify`
(`synthgen inspect`: re-verification against the manifest).
"""
