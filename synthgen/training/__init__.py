"""Training: the generic resumable loop, the harness every run shares, and what plugs into them (MSDM, LoRA, DP-SGD).

Modules, one job each:

- `loop` (optimizer loop, accumulation, mixed precision, EMA, validation, checkpoints), `checkpoints` (atomic
  resume points, RNG states), `ema`, `data` (decode, cache, split), `folder` (who owns DIR, resume or refuse,
  final install), `training_log` (log, loss plot, sample grids), `model_card` (model card, provenance),
  `model_keys` (the model-cache keys);
- `harness` (`TrainingRun`: one run into DIR, from claiming it to installing the model);
- MSDM: `msdm_phases` (the VAE and UNet phases), `msdm_run` (one MSDM run end to end);
- LoRA: `lora_model` (the peft-wrapped pipeline), `lora_run` (one LoRA run end to end);
- differential privacy: `dp_accounting` (budget calibration, privacy.json), `dp_sgd` (Opacus clipping, noise,
  Poisson batches), `dp_training` (`DPTraining`: the loop's hooks for one run).

Callers go through `synthgen.train`, the front door. Nothing heavy is imported here.
"""
