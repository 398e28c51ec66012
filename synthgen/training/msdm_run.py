"""One MSDM training run into a folder DIR: claim or resume DIR, run the phases, install the pipeline.

DIR ends as a plain diffusers `StableDiffusionPipeline` folder (loads with no synthgen import) plus
`synthgen_model.json`, README.md (model card), `training_log.jsonl`, `loss.png`, `samples/step-N.png`,
`privacy.json` under DP, and `.checkpoints/` holding the final checkpoint of each phase (to extend the run).
The harness (`harness.TrainingRun`) owns DIR, the log and the loop; this module plugs in the VAE and UNet
phases (`msdm_phases`) and what the finished model says about itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.atomic import atomic_dir
from synthgen.errors import SynthgenError
from synthgen.models.msdm import PRESETS, assemble_pipeline, build_unet, build_vae
from synthgen.models.safe_weights import check_model_folder, safe_kwargs
from synthgen.models.text_encoders import count_parameters, make_text_encoder, tokenizer_corpus
from synthgen.plan import derive_seed
from synthgen.recipe import PrivacyConfig, TrainingConfig
from synthgen.runtime import Progress, first_line
from synthgen.sources.base import Source
from synthgen.training import msdm_phases
from synthgen.training.checkpoints import seed_everything
from synthgen.training.data import TrainingData, grayscale_count, to_grayscale
from synthgen.training.harness import Notify, TrainingRun
from synthgen.training.loop import PhaseResult
from synthgen.training.model_card import library_versions, write_model_card, write_model_info
from synthgen.training.model_keys import neutral_fields

PHASES = ("vae", "unet")
SETTINGS_FORMAT = 1  # bump when a code change makes old checkpoints unfit to resume


@dataclass
class MSDMRequest:
    """Everything one MSDM training run needs; `prompts` are the recipe's class prompts (public text)."""

    config: TrainingConfig
    source: Source
    out_dir: Path
    base_dir: Path | None = None
    privacy: PrivacyConfig | None = None
    prompts: dict[str, list[str]] = field(default_factory=dict)
    recipe: Any = None
    recipe_sha256: str | None = None
    overwrite: bool = False
    device: str = "auto"
    allow_pickle: bool = False  # model.allow_pickle: a pickled pretrained VAE / text encoder may load


def run_settings(request: MSDMRequest, data_fingerprint: str) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one (not checkpoint_every or max_minutes; not unet_steps
    without DP, so a finished run can be extended with more steps; under DP the steps fix the noise, so they count)."""
    config = request.config
    exclude = {"data", "checkpoint_every", "max_minutes"} | ({"unet_steps"} if request.privacy is None else set())
    exclude |= neutral_fields(config)  # a run from before a field existed still resumes
    settings: dict[str, Any] = {
        "training": config.model_dump(mode="json", exclude=exclude),
        "data_sha256": data_fingerprint,
        "privacy": request.privacy.model_dump(mode="json") if request.privacy else None,
        "format": SETTINGS_FORMAT,
    }
    if (
        config.text_encoder.pretrained is None
        and tokenizer_corpus(config.text_encoder, bool(request.privacy)) == "prompts"
    ):
        settings["tokenizer_prompts"] = sorted({p for prompts in request.prompts.values() for p in prompts})
    return settings


def run_msdm(request: MSDMRequest, progress: Progress | None = None, notify: Notify | None = None) -> Path:
    """Train (or resume, or extend) the MSDM `request` describes into `request.out_dir`; returns the folder."""
    job = _MSDMTraining(request, progress, notify)
    job.train_vae()
    job.train_unet()
    return job.install()


class _MSDMTraining:
    """The state one MSDM run carries from phase to phase: the harness, the data split, the parts trained."""

    def __init__(self, request: MSDMRequest, progress: Progress | None, notify: Notify | None) -> None:
        config = self.config = request.config
        self.request = request
        self.run = TrainingRun(request.out_dir, PHASES, request.source, request.device, progress, notify)
        resumed = self.run.claim(run_settings(request, self.run.fingerprint), request.overwrite)
        _check_resume_point(self.run, config, resumed)
        self.run.begin(preset=config.preset)
        validation_split = 0.0 if request.privacy is not None else config.validation_split  # see dp_training.py
        split_by = config.split_by if validation_split > 0 else None  # nothing held out: no groups to keep whole
        self.data, self.train, self.val = self.run.load_data(
            config.resolution, validation_split, config.seed, split_by, "model.train.split_by"
        )
        self.channels, self.channels_reason = 3, ""
        self.settings = self.run.loop_settings(config)
        self.private = self._private_training() if request.privacy is not None else None
        self.results: dict[str, PhaseResult] = {}
        self.vae: Any = None
        self.vae_source = ""
        self.text: Any = None
        self.unet: Any = None

    def _private_training(self) -> Any:
        """The DP plan over the phases this run trains (the VAE phase only when it trains a VAE)."""
        from synthgen.training.dp_training import DPTraining

        config, request = self.config, self.request
        phases = {"unet": config.unet_steps}
        if not config.vae and config.vae_steps:
            phases = {"vae": config.vae_steps, **phases}
        covers = {"vae": ("vae",), "unet": ("unet", "text_encoder") if config.text_encoder.train else ("unet",)}
        return DPTraining(
            request.privacy, request.recipe, self.run.fingerprint, request.base_dir, len(self.train),
            config.batch_size, phases, covers,
        )  # fmt: skip

    def train_vae(self) -> None:
        """A pretrained VAE (frozen), or one built and trained for `vae_steps` (DP-SGD under privacy)."""
        config, device = self.config, self.run.device
        seed_everything(derive_seed(config.seed, "build", "vae"))
        if config.vae:
            self.vae = _load_vae(config.vae, self.request.base_dir, self.request.allow_pickle).to(device)
            self.vae_source = f"pretrained ({config.vae}), frozen"
            self._use_channels(*_vae_channels(config, int(self.vae.config.in_channels)))
        else:
            self._use_channels(*choose_channels(config.channels, self.data, self.private is not None))
            self.vae = build_vae(PRESETS[config.preset], config.resolution, self.channels).to(device)
            self.vae_source = f"{config.vae_steps} steps" + (" (DP-SGD)" if self.private else "")
            if config.vae_steps:
                phase = msdm_phases.vae_phase(self.vae, self.train, self.val, config, device)
                result = self.results["vae"] = self.run.run_phase(phase, self.settings, self.private)
                if result.stopped:
                    self.vae_source = f"{result.steps} of {config.vae_steps} steps (stopped by max_minutes)"
                    self.vae_source += " (DP-SGD)" if self.private else ""
        self.vae.requires_grad_(False).eval()

    def _use_channels(self, channels: int, reason: str) -> None:
        """Train on `channels` (1: the images as luma, grayscale in and out); say so when auto kept colour."""
        self.channels, self.channels_reason = channels, reason
        if channels == 1:
            self.data, self.train, self.val = (to_grayscale(d) for d in (self.data, self.train, self.val))
        elif "set channels: 1" in reason:  # mostly grayscale data kept in colour by a few images: tell the user
            self.run.notify(f"model.train.channels: 3 ({reason})")

    def _latents(self) -> tuple[msdm_phases.Latents, msdm_phases.Latents | None]:
        """Scaled VAE posteriors of the training and validation images; a trained VAE learns its scaling_factor."""
        vae, device = self.vae, self.run.device
        latents = msdm_phases.encode_latents(vae, self.train, device)
        if not self.config.vae:
            vae.register_to_config(scaling_factor=msdm_phases.latent_scale(latents, self.private is not None))
        scale = float(vae.config.scaling_factor)
        latents = msdm_phases.Latents(latents.mean * scale, latents.std * scale)
        val_latents = msdm_phases.encode_latents(vae, self.val, device) if len(self.val) else None
        if val_latents is not None:
            val_latents = msdm_phases.Latents(val_latents.mean * scale, val_latents.std * scale)
        return latents, val_latents

    def train_unet(self) -> None:
        """The UNet (and the text encoder when it trains) on the VAE's latents, with sample grids at checkpoints."""
        config, device, request = self.config, self.run.device, self.request
        preset = PRESETS[config.preset]
        latents, val_latents = self._latents()
        seed_everything(derive_seed(config.seed, "build", "unet"))
        self.text = text = _text_encoder(request, preset, self.train, self.run.folder.work / "tokenizer")
        text.model.to(device)
        unet = build_unet(preset, config.resolution, vae=self.vae, cross_attention_dim=text.hidden_size)
        self.unet = unet = unet.to(device)
        rows = msdm_phases.grid_prompts(request.prompts, request.privacy is not None, self.data)
        parts = {"vae": self.vae, "text": text, "unet": unet}
        grid = msdm_phases.sample_grid_writer(self.run.path, parts, rows, config.resolution, device)
        validation = (val_latents, text.tokenize(self.val.captions)) if val_latents is not None else None
        phase = msdm_phases.unet_phase(
            msdm_phases.Denoiser(unet, text), (latents, text.tokenize(self.train.captions)), validation, config,
            device, on_checkpoint=grid,
        )  # fmt: skip
        self.results["unet"] = self.run.run_phase(phase, self.settings, self.private)

    def install(self) -> Path:
        """The pipeline, its model info and card (and privacy.json under DP), installed into DIR."""
        pipeline = assemble_pipeline(self.vae.cpu(), self.text.model.cpu(), self.text.tokenizer, self.unet.cpu())
        staging = self.run.staging()
        pipeline.save_pretrained(staging, safe_serialization=True)
        steps_done = {name: result.steps for name, result in self.results.items()}  # fewer when the budget stopped it
        info = self._model_info(self.private.report(steps_done) if self.private is not None else None)
        write_model_info(staging, info)
        write_model_card(staging, info)
        if self.private is not None:
            self.private.write(staging)
        return self.run.install(staging, "unet", self.results["unet"].steps)

    def _model_info(self, dp: dict[str, Any] | None) -> dict[str, Any]:
        """synthgen_model.json: training provenance (never file names or captions of the training data)."""
        config, text, results = self.config, self.text, self.results
        return {
            "architecture": "MSDM",
            "preset": config.preset,
            "training": config.model_dump(mode="json", exclude={"data"}),
            "channels": self.channels,
            "channels_reason": self.channels_reason,
            # per-label counts are a non-private statistic of the data: left out under DP
            "training_data": self.run.training_data(self.data, self.train, self.val, labels=dp is None),
            "recipe_sha256": self.request.recipe_sha256,
            "parameters": {
                "vae": count_parameters(self.vae),
                "unet": count_parameters(self.unet),
                "text_encoder": count_parameters(text.model),
            },
            "text_encoder": {
                "kind": text.kind,
                "source": text.source,
                "trainable": text.trainable,
                "tokenizer_corpus": text.corpus,
                "hidden_size": text.hidden_size,
            },
            "vae_source": self.vae_source,
            "steps": {name: result.steps for name, result in results.items()},
            "budget": self.run.budget_record(config, results),
            "final_loss": {name: result.loss for name, result in results.items()},
            "validation_loss": {name: result.val_loss for name, result in results.items()},
            "dp": dp,
            "seconds": self.run.seconds(),
            "versions": library_versions(),
            "synthgen_version": __version__,
        }


def _check_resume_point(run: TrainingRun, config: TrainingConfig, resumed: bool) -> None:
    """A finished run is only rerun to extend it (more unet_steps); a checkpoint past the target is refused."""
    folder, last = run.folder, run.store.latest("unet")
    if resumed:
        run.refuse_spent_budget(config, "unet", config.unet_steps)
    if resumed and folder.finished and (last is None or last.step >= config.unet_steps):
        steps = last.step if last is not None else config.unet_steps
        raise SynthgenError(
            f"{folder.path} already holds this model trained for {steps} UNet steps; pass --overwrite to train it "
            "again, or raise unet_steps to train it further"
        )
    if last is not None and last.step > config.unet_steps:
        raise SynthgenError(
            f"{folder.path}: its checkpoint is at UNet step {last.step}, beyond unet_steps {config.unet_steps}; "
            "raise unet_steps, or pass --overwrite to start over"
        )


# `channels: auto` trains in grayscale when at least this share of the images is grayscale: a radiology set
# with a few annotated colour images is still a grayscale modality (the colour ones are converted to luma).
GRAY_SHARE = 0.95


def choose_channels(setting: int | str, data: TrainingData, private: bool) -> tuple[int, str]:
    """(channels, why) for `channels: 1 | 3 | auto`; auto is 1 when at least GRAY_SHARE of the images are gray.

    Under DP, auto is 3: whether private images have colour must not shape the released model.
    """
    if setting != "auto":
        return int(setting), "set in the recipe"
    if private:
        return 3, "auto under privacy: the choice must not depend on the private images; 1 must be set"
    gray = grayscale_count(data.images)
    if gray == len(data):
        return 1, "auto: every training image is grayscale"
    if gray >= GRAY_SHARE * len(data):
        return (
            1,
            f"auto: {gray} of {len(data)} training images are grayscale; the {len(data) - gray} in colour "
            "are trained as luma",
        )
    reason = f"auto: {len(data) - gray} of {len(data)} training images have colour"
    return 3, reason + ("; set channels: 1 to train in grayscale" if gray > len(data) // 2 else "")


def _vae_channels(config: TrainingConfig, vae_channels: int) -> tuple[int, str]:
    """A pretrained VAE fixes the channels; an explicit setting that disagrees is refused."""
    if config.channels != "auto" and int(config.channels) != vae_channels:
        raise SynthgenError(
            f"model.train.channels: {config.channels}, but the VAE in model.train.vae takes {vae_channels} channel(s)"
        )
    return vae_channels, f"those of the pretrained VAE ({config.vae})"


def _load_vae(name: str, base_dir: Path | None, allow_pickle: bool = False) -> Any:
    from diffusers import AutoencoderKL

    path = Path(name).expanduser()
    path = base_dir / path if base_dir is not None else path  # relative to the recipe; absolute stays itself
    sub = {"subfolder": "vae"} if (path / "vae" / "config.json").is_file() else {}
    check_model_folder(path / sub.get("subfolder", ""), "model.train.vae", allow_pickle)
    try:
        return AutoencoderKL.from_pretrained(path, local_files_only=True, **sub, **safe_kwargs(allow_pickle))
    except (OSError, ValueError) as error:
        raise SynthgenError(f"model.train.vae: cannot load an AutoencoderKL from {path}: {first_line(error)}") from None


def _text_encoder(request: MSDMRequest, preset: Any, train: Any, tokenizer_dir: Path) -> Any:
    """The run's text encoder; a built-in tokenizer is learnt once and reused on resume (ids must not move)."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tokenizer_dir) if (tokenizer_dir / "tokenizer.json").is_file() else None
    if saved is not None:  # how it was loaded (transformers 5): a resumed run's pipeline must not differ by it
        for key in ("is_local", "local_files_only"):
            saved.init_kwargs.pop(key, None)
    text = make_text_encoder(
        request.config.text_encoder,
        preset,
        captions=train.captions,
        prompts=[p for prompts in request.prompts.values() for p in prompts],
        private=request.privacy is not None,
        base_dir=request.base_dir,
        tokenizer=saved,
        allow_pickle=request.allow_pickle,
    )
    if saved is None and request.config.text_encoder.pretrained is None:
        _save_tokenizer(text.tokenizer, tokenizer_dir)
    return text


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Staged and renamed into place: a run killed mid-save must not leave a torn tokenizer.json to resume from."""
    with atomic_dir(folder) as staging:
        tokenizer.save_pretrained(staging)
