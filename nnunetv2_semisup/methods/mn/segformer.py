"""The M&N 2D model: Hugging Face SegFormer wrapped as in the reference (docs/mn.md).

``SegFormer2D`` = (input adapter) → ``SegformerForSemanticSegmentation`` with the classifier replaced by identity
(its "logits" are the fused decode-head features: ``decoder_hidden_size`` channels at ⌈H/4⌉ × ⌈W/4⌉) →
concatenation with the 3-channel input subsampled with stride 4 → ``ConvTranspose2d(hidden + 3, C, 4, stride 4)``
→ crop to H × W (top-left) when a side is not a multiple of 4.

- What the SegFormer sees (docs/mn.md "What the SegFormer sees"): ``SliceWiseModel`` maps nnU-Net's normalised
  intensities, per channel, through one fixed window to [0, 1] (``input_window``: for CT the dataset's foreground
  0.5th/99.5th percentiles, exactly nnU-Net's own clip; for z-scored channels z ∈ [−3, 3]) — a natural image's
  range, like the reference's [0, 1] CT input, and the same tissue always gets the same value. Then 1 input
  channel is replicated to 3 and any other number goes through the reference's 1×1 adapter stack C_in → 16 → 16
  → 3 (ReLU between), initialised so that every channel reaches the RGB input (channel i → colour i mod 3,
  averaged; with fewer than 3 channels the remaining colours get the channel mean) — the reference's constant
  init computes ReLU(Σ channels), which merges the channels into one grey value. With ``imagenet_normalization`` the RGB image is then normalised with the
  ImageNet mean/std, exactly what ``SegformerImageProcessor`` does to a [0, 1]-scaled photo for this checkpoint.
  No resizing (as the reference).
- Fine-tuning modes (Table 4): ``"lora"`` (peft LoRA r 64, α 64, dropout 0.1 on every encoder linear layer,
  ``bias="all"``, every LayerNorm trainable), ``"whole"`` (everything trainable), ``"decoder"`` (SegFormer encoder
  frozen; decode head, output head and adapter trainable — the paper's description), ``"freeze"`` (the whole
  SegFormer frozen, only the new output head and the adapter train — the reference's ``freeze`` option).
- ``pretrained=False`` builds the SegFormer from the checkpoint's config with random weights (the papers'
  "SegFormer from scratch" rows; variant ``_scratch``) — explicitly requested, never a fallback.

Library versions: the reference pinned transformers 4.41 / peft 0.11; this port uses the public APIs of
transformers 5.x / peft 0.21. transformers 5 renamed SegFormer's linear layers (query/key/value/dense/dense1/dense2
→ q_proj/k_proj/v_proj/o_proj/fc1/fc2); ``resolve_lora_targets`` maps the reference names to whatever the installed
version uses and the wrapper checks that every encoder linear layer got a LoRA adapter. Instead of peft's
``modules_to_save`` (which keeps a frozen copy of every LayerNorm next to a trainable one) the LayerNorm parameters
are made trainable in place — the same trainable function with one copy of each weight.

Weights always come from ``SegformerForSemanticSegmentation.from_pretrained`` (hub id or local folder, selected by
``nnUNet_semisup_segformer``); if that fails, ``SegFormerWeightsError`` explains how to fix it. There is no
fallback to random weights. (Resuming with ``--c`` builds the architecture from the config saved in the
checkpoint and loads the saved weights, so it needs no hub access.)
"""
import os
from typing import Callable, Iterable, Optional, Sequence, Set

import torch
from torch import nn

DEFAULT_SEGFORMER = "nvidia/segformer-b2-finetuned-ade-512-512"
SEGFORMER_ENV = "nnUNet_semisup_segformer"
REFERENCE_LORA_TARGETS = ("query", "key", "value", "dense", "dense1", "dense2")
# reference (transformers 4.x) module name -> transformers 5.x name
LORA_TARGET_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "dense": "o_proj",
                       "dense1": "fc1", "dense2": "fc2"}
FINETUNE_MODES = ("lora", "whole", "decoder", "freeze")
INPUT_MAPPINGS = ("imagenet", "unit", "none")  # mn_2d_input_mapping
INPUT_WINDOWS = ("dataset", "reference", "patch")  # mn_2d_input_window
Z_WINDOW = (-3.0, 3.0)  # z-scored channels: 99.7 % of a normal distribution
REFERENCE_CT_WINDOW = (-175.0, 250.0)  # HU window of the reference's Pancreas-CT loader, mapped to [0, 1]
# ImageNet statistics of SegformerImageProcessor (image_mean / image_std) for the nvidia SegFormer checkpoints
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SegFormerWeightsError(RuntimeError):
    pass


def segformer_checkpoint_from_env() -> str:
    """``nnUNet_semisup_segformer`` if set, else the paper's checkpoint id."""
    value = os.environ.get(SEGFORMER_ENV, "").strip()
    return value or DEFAULT_SEGFORMER


def load_segformer(checkpoint: str, log: Callable[[str], None] = print):
    """``SegformerForSemanticSegmentation.from_pretrained(checkpoint)`` in float32, or a ``SegFormerWeightsError``
    that names ``nnUNet_semisup_segformer`` and how to make the weights available."""
    from transformers import SegformerForSemanticSegmentation
    try:
        model, info = SegformerForSemanticSegmentation.from_pretrained(
            checkpoint, output_loading_info=True, dtype=torch.float32)
    except Exception as e:  # OSError, HF validation/connection errors, ...
        raise SegFormerWeightsError(
            f"M&N could not load the 2D SegFormer weights from '{checkpoint}' ({type(e).__name__}: {e}). The "
            f"checkpoint is chosen by the environment variable {SEGFORMER_ENV} (a Hugging Face hub id or a local "
            f"folder written by save_pretrained; default '{DEFAULT_SEGFORMER}'). Fix it by either (a) downloading "
            f"the weights on a machine with internet access: `hf download {DEFAULT_SEGFORMER}` (then, offline, "
            f"export HF_HUB_OFFLINE=1 to use the Hugging Face cache), or (b) saving them to a folder: python -c "
            f"\"from transformers import SegformerForSemanticSegmentation as S; "
            f"S.from_pretrained('{DEFAULT_SEGFORMER}').save_pretrained('/path/segformer-b2')\" and "
            f"export {SEGFORMER_ENV}=/path/segformer-b2. M&N never falls back to random 2D weights.") from e
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("decode_head.classifier"))
    if missing:
        encoder_missing = [k for k in missing if k.startswith("segformer.")]
        if encoder_missing:
            raise SegFormerWeightsError(
                f"The SegFormer checkpoint '{checkpoint}' (from {SEGFORMER_ENV}) lacks encoder weights "
                f"({len(encoder_missing)} tensors, e.g. {encoder_missing[:3]}); they would be random. Point "
                f"{SEGFORMER_ENV} at a complete SegformerForSemanticSegmentation checkpoint.")
        log(f"WARNING: SegFormer checkpoint '{checkpoint}' has no weights for {len(missing)} decode-head tensors "
            f"(e.g. {missing[:3]}): these start from random initialisation.")
    return model


def save_tiny_segformer(folder: str, hidden_sizes: Sequence[int] = (8, 16), depths: Sequence[int] = (1, 1),
                        num_attention_heads: Sequence[int] = (1, 2), sr_ratios: Sequence[int] = (2, 1),
                        decoder_hidden_size: int = 16, num_labels: int = 4, seed: int = 0) -> str:
    """Write a tiny randomly initialised ``SegformerForSemanticSegmentation`` with ``save_pretrained`` to
    ``folder`` (for tests and the offline demo; load it by ``export nnUNet_semisup_segformer=<folder>``).
    Same structure as the real SegFormers (stride-4 overlapping patch embedding, then stride 2 per stage)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    n = len(hidden_sizes)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=n, depths=list(depths), sr_ratios=list(sr_ratios),
        hidden_sizes=list(hidden_sizes), patch_sizes=[7] + [3] * (n - 1), strides=[4] + [2] * (n - 1),
        num_attention_heads=list(num_attention_heads), mlp_ratios=[4] * n, decoder_hidden_size=decoder_hidden_size,
        num_labels=num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegformerForSemanticSegmentation(config)
    model.save_pretrained(folder)
    return folder


def adapter_init_matrix(in_channels: int) -> torch.Tensor:
    """(3, C_in) map of channels to RGB at initialisation: colour k = mean of the channels i with i mod 3 = k;
    a colour without a channel (C_in < 3) gets the mean of all channels."""
    a = torch.zeros(3, in_channels)
    for k in range(3):
        members = [i for i in range(in_channels) if i % 3 == k] or list(range(in_channels))
        a[k, members] = 1.0 / len(members)
    return a


def input_adapter(in_channels: int, width: int = 16) -> nn.Sequential:
    """Reference multi-channel option: 1×1 convs C_in → 16 → 16 → 3 with ReLU between. Initialised so that, for
    the non-negative inputs of the [0, 1] mapping, the stack computes ``adapter_init_matrix`` exactly: hidden unit u
    copies channel u mod C_in (every unit live), the middle conv is the identity, and the last conv averages the
    units of each channel into its colour."""
    adapter = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(),
                            nn.Conv2d(width, 3, 1))
    a = adapter_init_matrix(in_channels)
    carried = [u % in_channels for u in range(width)]
    with torch.no_grad():
        w1 = torch.zeros(width, in_channels)
        w1[torch.arange(width), carried] = 1.0
        w3 = torch.zeros(3, width)
        for u, c in enumerate(carried):
            w3[:, u] = a[:, c] / carried.count(c)
        for conv, w in ((adapter[0], w1), (adapter[2], torch.eye(width)), (adapter[4], w3)):
            conv.weight.copy_(w[:, :, None, None])
            conv.bias.zero_()
    return adapter


def patch_to_unit_range(x: torch.Tensor, low: float = 0.005, high: float = 0.995,
                        max_samples: int = 65536) -> torch.Tensor:
    """Map each (sample, channel) of a (N, C, *spatial) patch to [0, 1]: its ``low``/``high`` quantiles (of at most
    ``max_samples`` voxels taken with a fixed stride, so it is cheap and deterministic) → 0 and 1, clipped. A
    constant channel maps to 0."""
    flat = x.detach().flatten(2).float()
    stride = max(1, flat.shape[-1] // max_samples)
    q = torch.quantile(flat[..., ::stride], torch.tensor([low, high], device=x.device), dim=-1)  # (2, N, C)
    lo, hi = [t.reshape(*t.shape, *([1] * (x.ndim - 2))).to(x.dtype) for t in q]
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def input_window(schemes: Sequence[str], intensity_properties: dict, kind: str = "dataset"):
    """Per-channel (low, high) in nnU-Net's normalised units that ``apply_window`` maps to 0 and 1.

    ``kind = "dataset"``: CT channels (``CTNormalization``: clip to the foreground's 0.5th/99.5th percentile, then
    z-score with the foreground mean/std) get exactly that clip range, so the window is a fixed HU window of this
    dataset; z-scored channels get ``Z_WINDOW``; channels already in [0, 1] keep [0, 1]; unnormalised channels get
    the foreground percentiles. ``"reference"``: CT channels get the reference's [−175, 250] HU window instead.
    """
    lows, highs = [], []
    for c, scheme in enumerate(schemes):
        props = intensity_properties.get(str(c), intensity_properties.get(c))
        if scheme == "CTNormalization":
            lo_hu, hi_hu = ((props["percentile_00_5"], props["percentile_99_5"]) if kind == "dataset"
                            else REFERENCE_CT_WINDOW)
            std = max(props["std"], 1e-8)
            lo, hi = (lo_hu - props["mean"]) / std, (hi_hu - props["mean"]) / std
        elif scheme == "ZScoreNormalization":
            lo, hi = Z_WINDOW
        elif scheme in ("RescaleTo01Normalization", "RGBTo01Normalization"):
            lo, hi = 0.0, 1.0
        elif scheme == "NoNormalization":
            lo, hi = props["percentile_00_5"], props["percentile_99_5"]
        else:
            raise ValueError(f"M&N does not know the 2D input window of nnU-Net's normalisation '{scheme}' (channel "
                             f"{c}); set mn_2d_input_window = 'patch' in a trainer subclass to map each patch by its "
                             f"own percentiles")
        if not hi > lo:
            raise ValueError(f"M&N 2D input window of channel {c} ({scheme}) is empty: [{lo}, {hi}]; check the "
                             f"plans' foreground_intensity_properties_per_channel")
        lows.append(float(lo)), highs.append(float(hi))
    return lows, highs


def apply_window(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(x − low)/(high − low) per channel (``low``/``high``: (C,)), clipped to [0, 1]; x is (N, C, *spatial)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    low, high = low.view(shape).to(x.dtype), high.view(shape).to(x.dtype)
    return ((x - low) / (high - low)).clamp(0, 1)


class SegFormer2D(nn.Module):
    """2D model of M&N: (N, C_in, H, W) → (N, C, H, W) logits (see module docstring)."""

    def __init__(self, segformer: nn.Module, in_channels: int, num_classes: int, decoder_hidden_size: int,
                 imagenet_normalization: bool = False):
        super().__init__()
        self.adapter = input_adapter(in_channels) if in_channels != 1 else None
        self.segformer = segformer
        self.head = nn.ConvTranspose2d(decoder_hidden_size + 3, num_classes, kernel_size=4, stride=4, padding=0)
        self.imagenet_normalization = imagenet_normalization
        # not persistent: constants, and checkpoints keep the keys they had before
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """The 3-channel image the SegFormer gets: replicated or adapted, then ImageNet-normalised if enabled."""
        x3 = x.repeat(1, 3, 1, 1) if self.adapter is None else self.adapter(x)
        if self.imagenet_normalization:
            x3 = (x3 - self.pixel_mean.to(x3.dtype)) / self.pixel_std.to(x3.dtype)
        return x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x3 = self.pixel_values(x)
        features = self.segformer(pixel_values=x3).logits
        sub = x3[:, :, ::4, ::4]
        if features.shape[-2:] != sub.shape[-2:]:
            raise RuntimeError(f"SegFormer features {tuple(features.shape[-2:])} do not match the stride-4 input "
                               f"{tuple(sub.shape[-2:])} for a {h}x{w} slice; the checkpoint's first patch "
                               f"embedding must have stride 4 (kernel 7, padding 3) like all SegFormers")
        out = self.head(torch.cat((features, sub.to(features.dtype)), 1))
        return out[:, :, :h, :w]

    def hf_model(self) -> nn.Module:
        """The plain ``SegformerForSemanticSegmentation`` (inside peft's wrapper when LoRA is used)."""
        m = self.segformer
        return m.get_base_model() if hasattr(m, "get_base_model") else m


def resolve_lora_targets(model: nn.Module, targets: Iterable[str]) -> list:
    """Module-name suffixes for peft: each name as given if the model has such modules, else its
    transformers-5 alias; unknown names are an error."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    resolved = []
    for t in targets:
        if t in names:
            resolved.append(t)
        elif LORA_TARGET_ALIASES.get(t) in names:
            resolved.append(LORA_TARGET_ALIASES[t])
        else:
            raise ValueError(f"LoRA target '{t}' matches no module of the SegFormer (module names: "
                             f"{sorted(names)}); fix mn_lora_targets")
    return resolved


def expected_trainable(wrapper: SegFormer2D, mode: str) -> Set[str]:
    """Names of the parameters that must be trainable in ``mode`` (docs/mn.md, property 16)."""
    names = [n for n, _ in wrapper.named_parameters()]
    if mode == "whole":
        return set(names)
    if mode == "decoder":
        return {n for n in names if not n.startswith("segformer.segformer.")}
    if mode == "freeze":
        return {n for n in names if n.startswith("head.") or n.startswith("adapter.")}
    modules = dict(wrapper.named_modules())
    out = set()
    for n in names:
        owner = modules.get(n.rsplit(".", 1)[0])
        if (".lora_A." in n or ".lora_B." in n or n.startswith("head.") or n.startswith("adapter.")
                or n.endswith("bias") or isinstance(owner, nn.LayerNorm)):
            out.add(n)
    return out


def verify_trainable(wrapper: SegFormer2D, mode: str) -> None:
    """Fail loudly if the trainable parameters differ from the expected set (module names can change between
    transformers/peft versions)."""
    trainable = {n for n, p in wrapper.named_parameters() if p.requires_grad}
    expected = expected_trainable(wrapper, mode)
    if trainable != expected:
        raise RuntimeError(f"M&N 2D fine-tuning mode '{mode}': trainable parameters differ from the specification. "
                           f"Unexpectedly trainable: {sorted(trainable - expected)[:10]}; unexpectedly frozen: "
                           f"{sorted(expected - trainable)[:10]}")
    if mode == "lora":
        hf = wrapper.hf_model()
        plain = [n for n, m in hf.segformer.named_modules() if type(m) is nn.Linear
                 and not n.endswith(".base_layer") and ".lora_" not in n]
        if plain:
            raise RuntimeError(f"M&N LoRA: encoder linear layers without an adapter: {plain[:10]}; extend "
                               f"mn_lora_targets")


def build_segformer_2d(checkpoint: str, in_channels: int, num_classes: int, finetune: str = "lora",
                       lora_r: int = 64, lora_alpha: int = 64, lora_dropout: float = 0.1,
                       lora_targets: Sequence[str] = REFERENCE_LORA_TARGETS,
                       log: Callable[[str], None] = print, config: Optional[dict] = None,
                       pretrained: bool = True, imagenet_normalization: bool = False) -> SegFormer2D:
    """Load the SegFormer from ``checkpoint``, wrap it and set up ``finetune``
    ('lora'/'whole'/'decoder'/'freeze').

    ``config`` (a ``SegformerConfig`` dict): build the architecture only, with random weights, for a caller that
    loads complete saved weights next (resuming a training run must not depend on the hub). ``pretrained=False``:
    the checkpoint's config with random weights (``_scratch``)."""
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"mn_2d_finetune must be one of {FINETUNE_MODES}, got '{finetune}'")
    if config is None and not pretrained:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        try:
            hf_config = SegformerConfig.from_pretrained(checkpoint)
        except Exception as e:
            raise SegFormerWeightsError(
                f"M&N from scratch needs the SegFormer *config* of '{checkpoint}' ({type(e).__name__}: {e}); set "
                f"{SEGFORMER_ENV} to a hub id or a local folder with a config.json.") from e
        hf = SegformerForSemanticSegmentation(hf_config)
        log(f"M&N: SegFormer built from the config of '{checkpoint}' with RANDOM weights (from scratch)")
    elif config is None:
        hf = load_segformer(checkpoint, log)
    else:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        hf = SegformerForSemanticSegmentation(SegformerConfig.from_dict(config))
    if hf.config.strides[0] != 4:
        raise ValueError(f"SegFormer checkpoint '{checkpoint}' has a first patch-embedding stride of "
                         f"{hf.config.strides[0]}; the M&N head needs 4")
    hf.decode_head.classifier = nn.Identity()
    hidden = hf.config.decoder_hidden_size
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model
        targets = resolve_lora_targets(hf.segformer, lora_targets)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                            bias="all")
        model = get_peft_model(hf, config)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                for p in m.parameters():
                    p.requires_grad_(True)
    else:
        model = hf
        for p in model.parameters():
            p.requires_grad_(True)
        if finetune == "decoder":
            for p in hf.segformer.parameters():
                p.requires_grad_(False)
        if finetune == "freeze":
            for p in hf.parameters():
                p.requires_grad_(False)
    wrapper = SegFormer2D(model, in_channels, num_classes, hidden, imagenet_normalization)
    verify_trainable(wrapper, finetune)
    return wrapper


def check_slice_size(wrapper: SegFormer2D, in_channels: int, slice_shape: Sequence[int], device) -> None:
    """Dry-run one slice so that sizes SegFormer cannot take fail at initialisation with an explanation."""
    was_training = wrapper.training
    wrapper.eval()
    try:
        with torch.no_grad():
            out = wrapper(torch.zeros((1, in_channels, *slice_shape), device=device))
        assert tuple(out.shape[-2:]) == tuple(slice_shape)
    except Exception as e:
        raise ValueError(f"The SegFormer cannot process {tuple(slice_shape)} slices of the nnU-Net patch ({e}). "
                         f"Its stages downsample by 4, 8, 16, 32 and its spatial-reduction convolutions need the "
                         f"feature maps to be at least sr_ratio wide; use a larger patch size or another "
                         f"mn_slice_axis.") from e
    finally:
        wrapper.train(was_training)
