"""Training: the generic resumable loop and what runs through it (MSDM phases, LoRA, DP-SGD).

Modules, one job each: `data` (decode, cache, split), `loop` (optimizer loop, accumulation, mixed precision,
EMA, validation, checkpoints), `checkpoints` (atomic resume points, RNG states), `ema`, `report` (log, loss
plot, sample grids), `folder` (who owns DIR, resume or refuse, final install), `msdm` (the VAE and UNet
phases), `run` (one MSDM run end to end), `card` (model card, provenance), `dp` (glue to `privacy`), `lora`.
Nothing heavy is imported here: `synthgen.train` re-exports the entry points without importing torch.
"""
