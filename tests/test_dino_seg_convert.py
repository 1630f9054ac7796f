"""The PyTorch layout of the BrainDINO segmentation model (jaxbrain.convert.dino_seg) against
BrainDINO's own network, with random weights, both ways: strict loads, logits, bit-for-bit
round trips, the command line, and the encoder from a plain DINO backbone.

BrainDINO's ``Primus_Multiscale_conv`` (``BrainDINO_seg/dinov3/models/primus.py``) imports
``dynamic_network_architectures``, which is not installed, so the network is rebuilt here in
torch.nn from its published structure: ``to3`` (Conv2d(4, 3, 1, bias=False) filled with 1/4,
convolved with its first C input rows), ``dino_encoder`` (its ``get_intermediate_layers(x,
n=interaction_indices, reshape=True)``, concatenated along channels), the empty ``decoder``
module and ``up_projection.decode`` (per stage Sequential(ConvTranspose2d(2, stride 2),
LayerNormNd, GELU), then a 1x1 Conv2d). The encoder is the dinov2 package's
DinoVisionTransformer (DINOv2's names) or transformers' DINOv3ViTModel (BrainDINO's DINOv3
backbone; the original DINOv3 code is not installed either, so its names reach it through
``jaxbrain.convert.dino.to_hf``, as in tests/test_dino_encoder.py).
"""

import math
import os

os.environ.setdefault("XFORMERS_DISABLED", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jaxbrain.convert import CheckpointMismatchError, detect, family_of, load_torch, save_torch  # noqa: E402
from jaxbrain.convert import dino as cdino  # noqa: E402
from jaxbrain.convert import dino_seg as cseg  # noqa: E402
from jaxbrain.models.dino import DinoViT  # noqa: E402
from jaxbrain.models.dino_seg import DinoSeg  # noqa: E402

PATCH, SIZE, HIDDEN, DEPTH, HEADS = 8, 32, 32, 4, 4
INDICES = [0, 1, 3]  # what the layout infers for 3 layers of 4 blocks (evenly spaced, last one)
TOL = dict(rtol=1e-4, atol=1e-4)


class LayerNormNd(torch.nn.Module):
    """dynamic_network_architectures' LayerNormNd: over channels, biased variance, eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + self.eps) + self.bias[:, None, None]


class PatchDecode(torch.nn.Module):
    def __init__(self, patch: int, width: int, classes: int):
        super().__init__()
        widths = [width // 2 ** i for i in range(int(math.log2(patch)) + 1)]
        stages = [torch.nn.Sequential(torch.nn.ConvTranspose2d(a, b, 2, stride=2), LayerNormNd(b),
                                      torch.nn.GELU()) for a, b in zip(widths, widths[1:])]
        self.decode = torch.nn.Sequential(*stages, torch.nn.Conv2d(widths[-1], classes, 1))

    def forward(self, x):
        return self.decode(x)


class PrimusMultiscaleConv(torch.nn.Module):
    """BrainDINO's Primus_Multiscale_conv (see the module docstring), registration order kept."""

    def __init__(self, encoder: torch.nn.Module, hidden: int, classes: int, indices: list[int]):
        super().__init__()
        self.up_projection = PatchDecode(PATCH, hidden * len(indices), classes)
        self.dino_encoder = encoder
        self.decoder = torch.nn.Module()  # the original's Decoder: a deep_supervision flag only
        self.interaction_indices = indices
        self.to3 = torch.nn.Conv2d(4, 3, kernel_size=1, bias=False)
        with torch.no_grad():
            self.to3.weight.fill_(0.25)

    def forward(self, x):
        x = F.conv2d(x, self.to3.weight[:, :x.shape[1]], bias=None)
        hier = self.dino_encoder.get_intermediate_layers(x, n=self.interaction_indices, reshape=True)
        return self.up_projection(torch.cat(hier, dim=1))


def _dinov3_encoder():
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    class Encoder(DINOv3ViTModel):
        """DINOv3's get_intermediate_layers(x, n=blocks, reshape=True): the tokens after those
        blocks through the final norm, CLS and storage tokens dropped, (B, D, h, w)."""

        def get_intermediate_layers(self, x, n, reshape=True):
            hidden = self(pixel_values=x, output_hidden_states=True).hidden_states
            drop = 1 + self.config.num_register_tokens
            b, grid = x.shape[0], (x.shape[2] // PATCH, x.shape[3] // PATCH)
            return [self.norm(hidden[i + 1])[:, drop:].transpose(1, 2).reshape(b, -1, *grid) for i in n]

    # BrainDINO's vit_base in small: 4 storage tokens, LayerScale, no qkv bias, eps 1e-6.
    cfg = DINOv3ViTConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=DEPTH,
                          num_attention_heads=HEADS, image_size=SIZE, patch_size=PATCH,
                          num_register_tokens=4, layerscale_value=0.5, layer_norm_eps=1e-6,
                          query_bias=False, key_bias=False, value_bias=False)
    return Encoder(cfg)


def _dinov2_encoder():
    from dinov2.models.vision_transformer import DinoVisionTransformer
    return DinoVisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=HIDDEN, depth=DEPTH,
                                 num_heads=HEADS, mlp_ratio=2.0, init_values=0.5, block_chunks=0)


def _network(kind: str, seed: int, classes: int = 3) -> PrimusMultiscaleConv:
    """The original network with every parameter random (norm weights around 1), eval mode."""
    torch.manual_seed(seed)
    net = PrimusMultiscaleConv(_dinov3_encoder() if kind == "dinov3" else _dinov2_encoder(),
                               HIDDEN, classes, INDICES).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            norm = name.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".1.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.1) + float(norm))
    return net


def _state(net: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _logits(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _same(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, u), (_, v) in zip(la, lb):
        assert np.asarray(u).dtype == np.asarray(v).dtype, path
        np.testing.assert_array_equal(u, v, err_msg=str(path))


@pytest.fixture(scope="module")
def slices():
    return np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def dinov2_net():
    return _network("dinov2", seed=1)


def _model(state: dict, **overrides) -> DinoSeg:
    """The DinoSeg the layout infers from ``state`` (DINOv2 files lack num_heads)."""
    family, canonical, _ = detect(state)
    assert family is cseg.FAMILY
    return DinoSeg(**{**family.config_for(canonical, "dino_seg"), "num_heads": HEADS, **overrides})


def test_dinov2_encoder_both_ways(dinov2_net, slices):
    """Import: strict, logits of 4 and of 2 modalities (to3's first 2 rows) as the original's.
    Export: the original loads it with strict=True and gives the same logits; import(export)
    is bit for bit, for 2 modalities too (to3's other rows written as 1/4)."""
    state = _state(dinov2_net)
    model = _model(state)
    assert (model.in_channels, model.fused_channels, model.out_channels, model.layers) == (4, 3, 3, (0, 1, 3))
    assert (model.pos_embed, model.num_registers, model.qkv_bias) == ("learned", 0, True)
    assert model.layer_scale_init is not None
    params, report = load_torch(state, model)
    assert report.ok and not report.ignored and len(report.loaded) == len(state)
    assert report.source_format == "BrainDINO segmentation (Primus_Multiscale_conv), DINOv2 original encoder"
    ours = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, slices)
    np.testing.assert_allclose(ours, _logits(dinov2_net, slices), **TOL)

    exported = save_torch(params, model, None)
    assert set(exported) == set(state)  # the original's names, its modules' order:
    assert list(exported)[0].startswith("up_projection.") and list(exported)[-1] == "to3.weight"
    fresh = _network("dinov2", seed=2)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=True)
    np.testing.assert_allclose(_logits(fresh, slices), _logits(dinov2_net, slices), rtol=0, atol=1e-6)
    back, _ = load_torch(exported, model)
    _same(back, params)

    two = DinoSeg(**{**{f: getattr(model, f) for f in DinoSeg.__dataclass_fields__
                        if f not in ("parent", "name")}, "in_channels": 2})
    p2, report = load_torch(state, two)
    assert report.ok and "to3.weight: the first 2 of its 4 modality rows" in str(report)
    np.testing.assert_array_equal(p2["fuse"]["kernel"], state["to3.weight"][:, :2, 0, 0].T)
    x2 = slices[..., :2]
    np.testing.assert_allclose(two.apply({"params": p2}, x2), _logits(dinov2_net, x2), **TOL)
    e2 = save_torch(p2, two, None)
    np.testing.assert_array_equal(e2["to3.weight"][:, 2:], np.full((3, 2, 1, 1), 0.25, np.float32))
    with_template = save_torch(p2, two, None, template=state)  # the rows a 2-modality model lacks
    np.testing.assert_array_equal(with_template["to3.weight"], state["to3.weight"])
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in e2.items()}, strict=True)
    np.testing.assert_allclose(_logits(fresh, x2), _logits(dinov2_net, x2), rtol=0, atol=1e-6)
    back, _ = load_torch(e2, two)
    _same(back, p2)


def test_dinov3_encoder_both_ways(slices):
    """BrainDINO's backbone kind (RoPE, storage tokens, no qkv bias) under transformers' names
    in the file: imported strictly with the original's logits; exported under DINOv3's own
    names (dino_encoder.* is convert.dino's backbone export, periods buffer included), which
    reach the network through to_hf with strict=True; import(export) bit for bit."""
    net = _network("dinov3", seed=3, classes=2)
    state = _state(net)
    model = _model(state)
    fields = (model.pos_embed, model.num_registers, model.qkv_bias, model.mask_token)
    assert fields == ("rope", 4, False, True)
    params, report = load_torch(state, model)
    assert report.ok and "transformers DINOv3ViTModel encoder" in report.source_format
    np.testing.assert_allclose(model.apply({"params": params}, slices), _logits(net, slices), **TOL)

    exported = save_torch(params, model, None)
    encoder = {k[len(cseg.PREFIX):]: v for k, v in exported.items() if k.startswith(cseg.PREFIX)}
    backbone = DinoViT(**model.encoder_kwargs())
    reference = cdino.save_torch(params["encoder"], backbone)
    assert list(encoder) == list(reference) and "rope_embed.periods" in encoder
    for k, v in reference.items():
        np.testing.assert_array_equal(encoder[k], v, err_msg=k)
    assert exported["up_projection.decode.3.weight"].shape == (2, 12, 1, 1)
    hf = {**{k: v for k, v in exported.items() if not k.startswith(cseg.PREFIX)},
          **{cseg.PREFIX + k: v for k, v in cdino.to_hf(encoder, model).items()}}
    fresh = _network("dinov3", seed=4, classes=2)
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf.items()}, strict=True)
    np.testing.assert_allclose(_logits(fresh, slices), _logits(net, slices), rtol=0, atol=1e-6)
    back, report = load_torch(exported, model)
    assert report.source_format == "BrainDINO segmentation (Primus_Multiscale_conv), DINOv3 original encoder"
    _same(back, params)

    # A model without a mask token: the originals' (unused) token is written as zeros, ignored back.
    bare = model.clone(mask_token=False)
    p = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "mask_token"}}
    out = save_torch(p, bare, None)
    np.testing.assert_array_equal(out[cseg.MASK], np.zeros((1, HIDDEN), np.float32))
    back, report = load_torch(out, bare)
    assert report.ok and report.ignored == [cseg.MASK]
    _same(back, p)
    with pytest.raises(ValueError, match="lora_rank=2: BrainDINO's segmentation network has no LoRA"):
        save_torch(params, model.clone(lora_rank=2), None)


def test_strict_reports_and_inference(dinov2_net, slices):
    state = _state(dinov2_net)
    model = _model(state)
    bad = {k: v for k, v in state.items() if k != "up_projection.decode.1.1.weight"}
    bad["up_projection.decode.9.weight"] = np.zeros((3, 12, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_torch(bad, model)
    message = str(err.value)
    assert "checkpoint <state dict> [BrainDINO segmentation" in message
    assert "up_projection.decode.1.1.weight  expected shape (24,)" in message
    assert "up_projection.decode.9.weight  shape (3, 12)" in message  # 1x1 kernels read squeezed
    assert [k for k, _ in err.value.report.missing] == ["up_projection.decode.1.1.weight"]
    assert [k for k, _ in err.value.report.unused] == ["up_projection.decode.9.weight"]
    five = model.clone(out_channels=5)
    with pytest.raises(CheckpointMismatchError, match=r"the head has 3 outputs, the model out_channels=5"):
        load_torch(state, five)
    fresh = nn.unbox(five.init(jax.random.key(0), slices)["params"])
    p5, report = load_torch(state, five, params=fresh, new_head=True)
    assert sorted(k for k, _, _ in report.new_head) == ["up_projection.decode.3.bias",
                                                        "up_projection.decode.3.weight"]
    np.testing.assert_array_equal(p5["head"]["kernel"], fresh["head"]["kernel"])
    with pytest.raises(CheckpointMismatchError, match=r"layers= with 3 block indices"):
        load_torch(state, model.clone(layers=(1, 3)))
    with pytest.raises(ValueError, match=r"to3\.weight has shape \(3, 4, 3, 3\), expected a 1x1"):
        load_torch(dict(state, **{"to3.weight": np.zeros((3, 4, 3, 3), np.float32)}), model)
    # encoder_only: dino_encoder.* alone, the rest kept.
    init = nn.unbox(model.init(jax.random.key(5), slices)["params"])
    enc, report = load_torch(state, model, params=init, encoder_only=True)
    assert report.ok and "to3.weight" in report.kept and "up_projection.decode.3.weight" in report.kept
    np.testing.assert_array_equal(enc["decoder_0"]["kernel"], init["decoder_0"]["kernel"])
    np.testing.assert_array_equal(enc["encoder"]["norm"]["scale"], state["dino_encoder.norm.weight"])
    # The released trainer's shapes (ViT-B/16, 4 layers, 3 regions): blocks 2, 5, 8, 11.
    zeros = lambda *shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731
    encoder = {"patch_embed.proj.weight": zeros(768, 3, 16, 16), "cls_token": zeros(1, 1, 768),
               "storage_tokens": zeros(1, 4, 768), "rope_embed.periods": zeros(16) + 1,
               **{f"blocks.{i}.mlp.fc1.weight": zeros(3072, 768) for i in range(12)}}
    vitb = {**{cseg.PREFIX + k: v for k, v in encoder.items()},
            "up_projection.decode.0.0.weight": zeros(3072, 1536, 2, 2),
            "up_projection.decode.4.weight": zeros(3, 192, 1, 1), "to3.weight": zeros(3, 4, 1, 1)}
    canonical, _ = cseg.canonicalize(vitb)
    cfg = cseg.infer_config(canonical)
    assert {k: cfg[k] for k in ("layers", "in_channels", "out_channels", "num_heads", "img_size")} == dict(
        layers=(2, 5, 8, 11), in_channels=4, out_channels=3, num_heads=12, img_size=224)


def test_command_line(dinov2_net, tmp_path, capsys):
    """inspect names the layout and the arguments; from-torch without --model finds dino_seg;
    to-torch writes every tensor of the original back."""
    from jaxbrain.convert.__main__ import main
    state = _state(dinov2_net)
    src = tmp_path / "seg.pth"
    torch.save(dinov2_net.state_dict(), src)
    assert main(["inspect", str(src)]) == 0
    shown = capsys.readouterr().out
    assert "BrainDINO segmentation (Primus_Multiscale_conv), DINOv2 original encoder" in shown
    assert '"layers": [0, 1, 3]' in shown and "the encoder blocks read (layers)" in shown
    assert main(["from-torch", str(src), str(tmp_path / "ckpt"), "--set", f"num_heads={HEADS}"]) == 0
    assert "(--model dino_seg)" in capsys.readouterr().out
    assert main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "out.safetensors")]) == 0
    from safetensors.numpy import load_file
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)


def test_encoder_from_a_plain_backbone(dinov2_net, tmp_path, slices):
    """A plain DINO backbone stays a dino_vit file (convert from-torch, then init.orbax with
    encoder_only as before), and also initialises the encoder straight from the file
    (init.torch with encoder_only; a strict full load asks for encoder_only)."""
    from jaxbrain.convert.__main__ import main
    from jaxbrain.convert.pretrained import load_pretrained
    state = _state(dinov2_net)
    backbone = {k[len(cseg.PREFIX):]: v for k, v in state.items() if k.startswith(cseg.PREFIX)}
    family, _, fmt = detect(backbone)
    assert family is cdino.FAMILY and fmt == "DINOv2 original"
    path = tmp_path / "backbone.pth"
    torch.save({"teacher": {"backbone." + k: torch.from_numpy(v) for k, v in backbone.items()}}, path)
    assert main(["from-torch", str(path), str(tmp_path / "ckpt"), "--set", f"num_heads={HEADS}"]) == 0
    model = _model(state)
    assert family_of(model) is cseg.FAMILY
    fresh = {"params": nn.unbox(model.init(jax.random.key(0), slices)["params"])}
    via_orbax, report = load_pretrained(str(tmp_path / "ckpt"), model, fresh, encoder_only=True)
    assert report.ok and "taken as encoder/" in str(report.adapted)
    via_torch, report = load_pretrained(str(path), model, fresh, encoder_only=True)
    assert report.ok and "a bare backbone as dino_encoder" in report.source_format
    reference, _ = load_torch(state, model)
    _same(via_orbax["params"]["encoder"], reference["encoder"])
    _same(via_torch["params"]["encoder"], reference["encoder"])
    _same(via_torch["params"]["decoder_0"], fresh["params"]["decoder_0"])
    with pytest.raises(CheckpointMismatchError, match=r"bare DINO backbone \(no up_projection"):
        load_torch(str(path), model)
