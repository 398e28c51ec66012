"""DP-SGD: budget calibration across phases, Poisson batches, per-sample clipping on the real model types
(diffusers UNet + BERT, AutoencoderKL) in Opacus hooks mode, virtual steps, empty batches, the privacy record,
and the refusals that keep the guarantee honest. Tiny modules only: the whole file runs in seconds."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from synthgen.errors import SynthgenError
from synthgen.recipe import PrivacyConfig, load_recipe, parse_recipe
from synthgen.training.dp_accounting import (
    PhaseSpec,
    PrivacyPlan,
    _epsilon,
    _history,
    check_privacy_sources,
    plan_privacy,
    privacy_report,
    write_privacy_json,
)
from synthgen.training.dp_sgd import PoissonBatches, make_private, private_step, step_on_empty_batch, unwrap

REPO = Path(__file__).resolve().parents[1]
RDP = PrivacyConfig(target_epsilon=8, delta=1e-5, accountant="rdp")
REPORT_KEYS = {
    "epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "max_grad_norm",
    "target_epsilon", "covers", "not_covered", "opacus_version",
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny modules run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def phases(vae: int = 200, unet: int = 600, n: int = 600, batch: int = 32) -> list[PhaseSpec]:
    return [PhaseSpec("vae", n, batch, vae), PhaseSpec("unet", n, batch, unet, covers=("unet", "text_encoder"))]


def fixed_plan(sigma: float, clip: float, n: int = 32, batch: int = 4, phase: str = "p") -> PrivacyPlan:
    """A plan with a chosen sigma (0: no noise, so clipping can be checked exactly)."""
    step = PhaseSpec(phase, n, batch, 10, (phase,), sigma)
    return PrivacyPlan(8.0, 1e-5, "rdp", clip, sigma, {phase: step}, 8.0)


# --- calibration ---------------------------------------------------------------------------------------------


def test_plan_meets_target_with_the_smallest_sigma():
    plan = plan_privacy(RDP, phases())
    assert plan.expected_epsilon <= 8 and plan.accountant == "rdp" and plan.note is None
    history = _history(phases(), plan.noise_multiplier * 0.99)
    assert _epsilon("rdp", history, 1e-5) > 8  # 1 % less noise would overspend: sigma is (nearly) minimal
    assert plan.phases["unet"].sample_rate == pytest.approx(32 / 600)
    assert plan.phases["unet"].expected_batch_size == 32 and plan.phases["unet"].covers == ("unet", "text_encoder")
    looser = plan_privacy(PrivacyConfig(target_epsilon=16, delta=1e-5, accountant="rdp"), phases())
    assert looser.noise_multiplier < plan.noise_multiplier


def test_epsilon_falls_as_noise_grows():
    values = [_epsilon("rdp", [(s, 0.05, 500)], 1e-5) for s in (0.6, 0.8, 1.0, 1.5, 3.0, 10.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_composing_phases_costs_more_than_one():
    one = plan_privacy(RDP, [PhaseSpec("unet", 600, 32, 600)])
    two = plan_privacy(RDP, phases())
    assert two.noise_multiplier > one.noise_multiplier
    sigma = one.noise_multiplier
    assert _epsilon("rdp", _history(phases(), sigma), 1e-5) > _epsilon("rdp", _history(phases(0), sigma), 1e-5)


def test_prv_composes_phases_of_different_sample_rates():
    specs = [PhaseSpec("vae", 400, 16, 50), PhaseSpec("unet", 400, 32, 50)]
    prv, rdp = (PrivacyConfig(target_epsilon=2, delta=1e-5, accountant=kind) for kind in ("prv", "rdp"))
    plan = plan_privacy(prv, specs)
    assert plan.accountant == "prv" and plan.expected_epsilon <= 2
    assert plan.noise_multiplier <= plan_privacy(rdp, specs).noise_multiplier * 1.01  # PRV is the tighter bound
    assert _epsilon("prv", _history(specs, 1.0), 1e-5) > _epsilon("prv", _history(specs[1:], 1.0), 1e-5)


def test_gdp_falls_back_to_rdp_when_it_cannot_compose():
    gdp = PrivacyConfig(target_epsilon=8, delta=1e-5, accountant="gdp")
    same_rate = plan_privacy(gdp, phases())  # equal (sigma, q) phases merge into one exact entry
    assert same_rate.accountant == "gdp" and same_rate.note is None
    mixed = plan_privacy(gdp, [PhaseSpec("vae", 600, 16, 200), PhaseSpec("unet", 600, 32, 600)])
    assert mixed.accountant == "rdp" and mixed.requested_accountant == "gdp" and "gdp" in mixed.note


def test_delta_defaults_to_a_tenth_of_one_over_n():
    plan = plan_privacy(PrivacyConfig(target_epsilon=8, accountant="rdp"), phases(n=500))
    assert plan.delta == pytest.approx(1 / 5000)


def test_infeasible_budgets_are_one_line_errors():
    with pytest.raises(SynthgenError, match="out of reach") as error:
        plan_privacy(PrivacyConfig(target_epsilon=0.01, delta=1e-5, accountant="rdp"), phases())
    assert "\n" not in str(error.value)
    with pytest.raises(
        SynthgenError, match=r"sample rate = batch_size 32 / 10 training images = 3.2, must be in \(0, 1\]"
    ):
        plan_privacy(RDP, [PhaseSpec("unet", 10, 32, 100)])
    with pytest.raises(SynthgenError, match="no training steps"):
        plan_privacy(RDP, phases(0, 0))


# --- Poisson sampling -----------------------------------------------------------------------------------------


def test_poisson_batches_are_deterministic_and_resume_exactly():
    def batches(seed: int) -> PoissonBatches:
        return PoissonBatches(1000, 0.02, torch.Generator().manual_seed(seed))

    first, again = batches(3), batches(3)
    drawn = [next(first) for _ in range(50)]
    assert all(torch.equal(a, next(again)) for a in drawn)
    assert 15 < sum(len(b) for b in drawn) / 50 < 25  # about q * n per batch, varying
    assert len({len(b) for b in drawn}) > 3
    state = first.state_dict()
    ahead = [next(first) for _ in range(5)]
    resumed = batches(99)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, next(resumed)) for a in ahead) and resumed.drawn == 55
    sparse = PoissonBatches(10, 0.05, torch.Generator().manual_seed(0))
    assert any(len(next(sparse)) == 0 for _ in range(20))  # empty batches happen


# --- DP-SGD on the real module types --------------------------------------------------------------------------


class Denoiser(torch.nn.Module):
    """A UNet2DConditionModel conditioned on a BERT trained with it (one optimizer, one wrapper)."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel
        from transformers import BertConfig, BertModel

        self.unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
        )  # fmt: skip
        config = BertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        self.text = BertModel(config)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, t, encoder_hidden_states=self.text(ids)[0]).sample  # no position ids: see dp_sgd.py


class Autoencoding(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=16,
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.vae.encode(images).latent_dist.mode()).sample


@pytest.fixture(scope="module")
def denoiser_data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    n = 8
    return {
        "noisy": torch.randn((n, 4, 8, 8), generator=generator),
        "t": torch.randint(0, 1000, (n,), generator=generator),
        "ids": torch.randint(0, 40, (n, 12), generator=generator),
        "noise": torch.randn((n, 4, 8, 8), generator=generator),
    }


def denoiser_loss(model: torch.nn.Module, data: dict[str, torch.Tensor]):
    def loss(index: torch.Tensor) -> torch.Tensor:
        prediction = model(data["noisy"][index], data["t"][index], data["ids"][index])
        return (prediction - data["noise"][index]).pow(2).flatten(1).mean(1)

    return loss


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def clipped_step(module: torch.nn.Module, loss, batch: int, clip: float) -> float:
    """One DP step with sigma 0 and SGD(lr=1): returns |sum of clipped per-sample gradients|, checks weights move."""
    torch.manual_seed(0)
    plan = fixed_plan(0.0, clip, n=4 * batch, batch=batch)
    before = [p.detach().clone() for p in trainable(module)]
    optimizer = torch.optim.SGD(trainable(module), lr=1.0)
    module.train()
    private, dp_optimizer = make_private(module, optimizer, plan, "p")
    loss(torch.arange(batch)).mean().backward()
    dp_optimizer.step()
    summed = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in dp_optimizer.params)) * batch
    dp_optimizer.zero_grad(set_to_none=True)
    assert unwrap(private) is module
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable(module), strict=True))
    return summed


def test_unet_and_bert_take_a_clipped_step_in_hooks_mode(denoiser_data):
    model = Denoiser()
    summed = clipped_step(model, denoiser_loss(model, denoiser_data), batch=4, clip=1e-3)
    assert 0 < summed <= 1e-3 * 4 * (1 + 1e-4)  # every per-sample gradient clipped to 1e-3
    assert model.text.embeddings.position_embeddings.weight.grad is None  # zero_grad ran; hooks gone
    assert not model.text.pooler.dense.weight.requires_grad  # unused by conditioning: frozen
    assert not model.text._forward_pre_hooks and not model.unet.conv_in._forward_hooks


def test_autoencoder_takes_a_clipped_step_in_hooks_mode():
    model = Autoencoding()
    images = torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    summed = clipped_step(model, lambda i: (model(images[i]) - images[i]).pow(2).flatten(1).mean(1), 4, 1e-3)
    assert 0 < summed <= 1e-3 * 4 * (1 + 1e-4)


def test_virtual_steps_add_up_to_one_batch(denoiser_data):
    """Micro-batches of 2, 3 and 3 items give the same clipped-sum step as one batch of 8 (noise 0)."""
    model = Denoiser()
    results = []
    for micro in (8, 3):
        copy_ = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(trainable(copy_), lr=1.0)
        _, dp_optimizer = make_private(copy_, optimizer, fixed_plan(0.0, 0.05, n=32, batch=8), "p")
        private_step(dp_optimizer, torch.arange(8), micro, denoiser_loss(copy_, denoiser_data))
        results.append(torch.cat([p.detach().flatten() for p in copy_.parameters()]))
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(results[0], start)
    assert torch.allclose(results[0] - start, results[1] - start, atol=1e-7, rtol=1e-4)


def test_an_empty_batch_still_takes_a_noise_step():
    model = Autoencoding().train()
    optimizer = torch.optim.SGD(trainable(model), lr=1.0)
    _, dp_optimizer = make_private(model, optimizer, fixed_plan(1.0, 1.0), "p")
    before = [p.detach().clone() for p in trainable(model)]

    def never(index: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no forward pass on an empty batch")

    assert private_step(dp_optimizer, torch.empty(0, dtype=torch.long), 2, never) is None
    moved = torch.cat([(a.detach() - b).flatten() for a, b in zip(trainable(model), before, strict=True)])
    assert moved.std() == pytest.approx(1.0 * 1.0 / 4, rel=0.1)  # sigma * C / expected batch size
    step_on_empty_batch(dp_optimizer)  # the bare helper works as well


def test_layers_that_mix_samples_are_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(SynthgenError, match="cannot be trained with DP-SGD"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), fixed_plan(1.0, 1.0), "p")
    with pytest.raises(SynthgenError, match="not in the privacy plan"):
        make_private(Autoencoding(), torch.optim.SGD(Autoencoding().parameters(), lr=1), fixed_plan(1.0, 1.0), "x")


# --- the record -----------------------------------------------------------------------------------------------


def test_privacy_report_and_file(tmp_path):
    from synthgen.models.loading import read_model_info

    plan = plan_privacy(RDP, phases())
    report = privacy_report(plan, {"vae": 200, "unet": 600})
    assert set(report) == REPORT_KEYS
    assert report["epsilon"] <= report["target_epsilon"] == 8
    assert report["covers"] == ["vae", "unet", "text_encoder"] and report["steps"] == {"vae": 200, "unet": 600}
    assert any("drop" in line for line in report["not_covered"])
    partial = privacy_report(plan, {"unet": 300}, not_covered=["the validation loss"])
    assert partial["epsilon"] < report["epsilon"] and partial["covers"] == ["unet", "text_encoder"]
    assert partial["not_covered"][-1] == "the validation loss"
    with pytest.raises(SynthgenError, match="not in the plan"):
        privacy_report(plan, {"lora": 3})
    write_privacy_json(tmp_path, report)
    assert json.loads((tmp_path / "privacy.json").read_text()) == report
    assert read_model_info(tmp_path)["dp"]["epsilon"] == report["epsilon"]


# --- refusals -------------------------------------------------------------------------------------------------


def private_recipe(**train: str):
    return parse_recipe(
        {
            "name": "dp",
            "model": {"train": {"data": {"type": "demo"}, **train}},
            "classes": {"polyp": {"count": 1, "prompts": ["a polyp"]}},
            "privacy": {"target_epsilon": 8},
        }
    )


def fake_model(folder: Path, sha256: str, dp: dict | None) -> Path:
    (folder / "vae").mkdir(parents=True)
    info = {"training_data": {"sha256": sha256, "images": 600}, "dp": None}
    (folder / "synthgen_model.json").write_text(json.dumps(info))
    if dp is not None:
        (folder / "privacy.json").write_text(json.dumps(dp))
    return folder


def test_parts_trained_on_the_same_data_without_dp_are_refused(tmp_path):
    fake_model(tmp_path / "plain", "abc", None)
    with pytest.raises(SynthgenError, match="model.train.vae: .* without differential privacy"):
        check_privacy_sources(private_recipe(vae="plain/vae"), "abc", tmp_path)
    with pytest.raises(SynthgenError, match="text_encoder.pretrained"):
        recipe = private_recipe(text_encoder={"pretrained": "plain"})
        check_privacy_sources(recipe, "abc", tmp_path)
    assert check_privacy_sources(private_recipe(vae="plain/vae"), "other data", tmp_path) == []
    assert check_privacy_sources(private_recipe(vae="hub/some-vae"), "abc", tmp_path) == []


def test_earlier_dp_training_on_the_same_data_is_composed(tmp_path):
    earlier = privacy_report(plan_privacy(RDP, phases()), {"vae": 200, "unet": 600})
    fake_model(tmp_path / "private", "abc", earlier)
    spent = check_privacy_sources(private_recipe(vae="private/vae"), "abc", tmp_path)
    assert [p.name for p in spent] == ["model.train.vae:vae", "model.train.vae:unet"]
    assert all(p.spent and p.noise_multiplier == earlier["noise_multiplier"] for p in spent)
    plan = plan_privacy(RDP, [*spent, PhaseSpec("unet", 600, 32, 600)])
    assert plan.noise_multiplier > earlier["noise_multiplier"]  # the new training gets what is left
    report = privacy_report(plan, {"unet": 600})
    assert report["epsilon"] <= 8 and report["steps"]["model.train.vae:unet"] == 600


def test_schema_refuses_private_training_that_would_void_the_guarantee(tmp_path):
    path = tmp_path / "recipe.yaml"
    text = (REPO / "recipes" / "demo-dp.yaml").read_text()
    captions = "    preset: tiny\n    text_encoder: {tokenizer_corpus: captions}\n"
    path.write_text(text.replace("    preset: tiny\n", captions))
    with pytest.raises(SynthgenError, match="tokenizer_corpus: .*private captions"):
        load_recipe(path)
    with pytest.raises(SynthgenError, match="trains nothing"):
        parse_recipe(
            {
                "name": "x",
                "model": {"pretrained": "some/model"},
                "classes": {"a": {"count": 1, "prompts": ["a"]}},
                "audit": {"enabled": False},
                "privacy": {"target_epsilon": 8},
            }
        )


def test_demo_dp_recipe_fits_its_budget():
    recipe = load_recipe(REPO / "recipes" / "demo-dp.yaml").recipe
    train, privacy = recipe.model.train, recipe.privacy
    assert privacy is not None and train is not None and train.data.classes is not None
    n = train.data.per_class * len(train.data.classes)
    specs = phases(train.vae_steps, train.unet_steps, n, train.batch_size)
    plan = plan_privacy(privacy.model_copy(update={"accountant": "rdp"}), specs)
    assert plan.expected_epsilon <= privacy.target_epsilon and 0.5 < plan.noise_multiplier < 3


def test_dataset_card_states_the_guarantee_and_its_limits(tmp_path):
    from synthgen.output.dataset_card import write_dataset_card

    report = privacy_report(plan_privacy(RDP, phases()), {"vae": 200, "unet": 600})
    audit = {"embedder": "pixel", "threshold": 0.99, "action": "drop", "checked": 9, "flagged": 1, "dropped": 1}
    text = write_dataset_card(
        tmp_path, name="x", description="", domain="", class_counts={"a": 1}, formats=["parquet"],
        provenance_summary={}, audit_summary=audit, dp=report,
    ).read_text(encoding="utf-8")  # fmt: skip
    assert f"ε = {report['epsilon']}" in text and "rdp accountant" in text and "`text_encoder`" in text
    assert "per training image" in text and "k·ε" in text and "Not covered by the guarantee:" in text
    assert "filtered with `audit.action: drop`" in text and "unet 600 steps at sample rate 0.05333" in text


def test_a_private_recipe_never_publishes_from_a_non_private_model():
    from synthgen.build import _provenance

    loaded = load_recipe(REPO / "recipes" / "demo-dp.yaml")
    with pytest.raises(SynthgenError, match="no privacy record"):
        _provenance(loaded, "msdm-x", "0" * 64, None)
    provenance = _provenance(loaded, "msdm-x", "0" * 64, {"epsilon": 7.96, "delta": 1e-5, "accountant": "prv"})
    assert (provenance["dp_epsilon"], provenance["dp_delta"]) == (7.96, 1e-5)
