"""Volume Fusion (MIS-FM): self-supervised segmentation of fused volumes.

Each training sample is a background crop ``bg`` and a foreground crop ``fg`` of the same
size. A label map of fusion classes k in {0, ..., K} (K = ``classes - 1``, 4 by default) is
drawn, and the network sees ``fused = alpha * fg + (1 - alpha) * bg`` with ``alpha = k / K``
voxel-wise; it is trained to segment k. Two ways to draw the label map:

- ``"blocks"`` (PyMIC's current ``VolumeFusion``): one block size per sample, uniform in
  [``block_min``, ``block_max``] per axis (inclusive), tiles the crop from a random offset in
  [0, n mod size] per axis; exactly floor(``fg_ratio`` x number of blocks) whole blocks,
  chosen uniformly, get k uniform in {1..K}; the rest of the crop (other blocks and the
  border the tiling leaves) is 0;
- ``"boxes"`` (the paper's): a number of boxes uniform in ``box_count`` (inclusive), each
  with sides uniform in [``box_min``, ``box_max``] (inclusive) centred on a uniform voxel,
  cut at the border, and k uniform in {1..K}; later boxes overwrite earlier ones.

The foreground comes from ``foreground="pair"``: the other crop of the same volume (the data
pipeline cuts ``crops_per_volume=2`` adjacent crops from each volume; sample 2i fuses 2i+1 and
the other way round, as PyMIC's two random crops of one volume), or ``"roll"``: the previous
sample of the same device's batch (the paper's ``torch.roll(x, 1, 0)``).

Everything is drawn on device inside the jitted step, vectorised over the batch. Loss:
``dice`` x Dice + ``ce`` x cross-entropy (0.5 each) over the K + 1 classes, PyMIC's: softmax,
Dice per class over all voxels of the batch (smooth 1e-5) averaged over classes including
background, cross-entropy averaged over voxels. A deep-supervision output (a tuple, coarse
scales after the first) is upsampled to the label size (trilinear) and weighted by
``deep_supervision`` (default 1, 1/2, 1/4, ... normalised to sum 1).
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import jax
import jax.numpy as jnp

from jaxbrain.objectives.segmentation import SMOOTH, Segmentation, upsampled_outputs


def _axis_ints(key, lo, hi):
    """One integer per axis, uniform in [lo[a], hi[a]] inclusive."""
    return [jax.random.randint(jax.random.fold_in(key, a), (), lo[a], hi[a] + 1) for a in range(3)]


def block_layout(key: jax.Array, spatial: tuple[int, int, int], *, classes: int = 5,
                 fg_ratio: float = 0.7, block_min=(8, 8, 8), block_max=(32, 32, 32)) -> dict:
    """The random draws of one sample's block grid: block ``sizes`` and ``offsets`` (3,),
    ``counts`` of whole blocks per axis (3,), and ``table``: the class of every block in
    raster order (0 for background; entries past the block count are 0)."""
    k_size, k_off, k_pick, k_cls = jax.random.split(key, 4)
    sizes = _axis_ints(k_size, block_min, block_max)
    offsets = [jax.random.randint(jax.random.fold_in(k_off, a), (), 0, spatial[a] % sizes[a] + 1)
               for a in range(3)]
    counts = [spatial[a] // sizes[a] for a in range(3)]
    n_blocks = counts[0] * counts[1] * counts[2]
    ratio = fractions.Fraction(fg_ratio).limit_denominator(10_000)
    n_fg = (n_blocks * ratio.numerator) // ratio.denominator
    most = math.prod(n // lo for n, lo in zip(spatial, block_min))  # static bound on blocks
    index = jnp.arange(most)
    # A uniformly random subset of exactly n_fg of the n_blocks blocks: the n_fg smallest of
    # i.i.d. uniforms.
    u = jnp.where(index < n_blocks, jax.random.uniform(k_pick, (most,)), 2.0)
    rank = jnp.argsort(jnp.argsort(u))
    k = jax.random.randint(k_cls, (most,), 1, classes)
    return dict(sizes=jnp.stack(sizes), offsets=jnp.stack(offsets), counts=jnp.stack(counts),
                table=jnp.where(rank < n_fg, k, 0).astype(jnp.int32))


def render_blocks(layout: dict, spatial: tuple[int, int, int]) -> jax.Array:
    """The (D, H, W) label map of a block layout."""
    sizes, offsets, counts, table = (layout[k] for k in ("sizes", "offsets", "counts", "table"))
    ids, inside = [], []
    for a in range(3):
        z = jnp.arange(spatial[a]) - offsets[a]
        b = jnp.floor_divide(z, sizes[a])
        ids.append(jnp.clip(b, 0, None))
        inside.append((z >= 0) & (b < counts[a]))
    block = (ids[0][:, None, None] * (counts[1] * counts[2]) + ids[1][None, :, None] * counts[2]
             + ids[2][None, None, :])
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return jnp.where(mask, table[jnp.clip(block, 0, table.shape[0] - 1)], 0).astype(jnp.int32)


def box_layout(key: jax.Array, spatial: tuple[int, int, int], *, classes: int = 5,
               box_count=(10, 40), box_min=(8, 8, 8), box_max=(40, 80, 80)) -> dict:
    """The random draws of one sample's boxes: ``count`` (boxes used), and per box (up to
    ``box_count[1]``) its drawn ``sides`` (M, 3), ``starts`` / ``ends`` (M, 3, cut at the
    border) and class ``k`` (M,)."""
    k_n, k_size, k_centre, k_cls = jax.random.split(key, 4)
    most = box_count[1]
    count = jax.random.randint(k_n, (), box_count[0], box_count[1] + 1)
    sides, starts, ends = [], [], []
    for a, n in enumerate(spatial):
        size = jax.random.randint(jax.random.fold_in(k_size, a), (most,), box_min[a], box_max[a] + 1)
        centre = jax.random.randint(jax.random.fold_in(k_centre, a), (most,), 0, n)
        lo = centre - size // 2
        sides.append(size)
        starts.append(jnp.maximum(lo, 0))
        ends.append(jnp.minimum(lo + size, n))
    return dict(count=count, sides=jnp.stack(sides, -1), starts=jnp.stack(starts, -1),
                ends=jnp.stack(ends, -1), k=jax.random.randint(k_cls, (most,), 1, classes))


def render_boxes(layout: dict, spatial: tuple[int, int, int]) -> jax.Array:
    """The (D, H, W) label map of a box layout: boxes painted in order, later ones on top."""
    grids = [jnp.arange(n) for n in spatial]

    def paint(j, label):
        ins = [(g >= layout["starts"][j, a]) & (g < layout["ends"][j, a])
               for a, g in enumerate(grids)]
        box = ins[0][:, None, None] & ins[1][None, :, None] & ins[2][None, None, :]
        return jnp.where(box & (j < layout["count"]), layout["k"][j], label)

    return jax.lax.fori_loop(0, layout["k"].shape[0], paint, jnp.zeros(spatial, jnp.int32))


def fuse(background: jax.Array, foreground: jax.Array, labels: jax.Array, classes: int) -> jax.Array:
    """alpha * fg + (1 - alpha) * bg with alpha = label / K; images (..., C), labels (...)."""
    alpha = (labels.astype(jnp.float32) / (classes - 1))[..., None]
    return alpha * foreground + (1.0 - alpha) * background


def softmax_dice_ce(logits: jax.Array, onehot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """PyMIC's Dice loss (per class over every voxel of the batch, averaged over classes) and
    cross-entropy (averaged over voxels) of softmax logits (..., K)."""
    logits = logits.astype(jnp.float32)
    p = jax.nn.softmax(logits, -1)
    axes = tuple(range(p.ndim - 1))
    inter = jnp.sum(p * onehot, axes)
    dice = (2.0 * inter + SMOOTH) / (jnp.sum(onehot, axes) + jnp.sum(p, axes) + SMOOTH)
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits, -1), -1))
    return 1.0 - jnp.mean(dice), ce


@dataclasses.dataclass(frozen=True)
class VolumeFusion:
    """Volume Fusion objective; see the module docstring. ``batch_shards`` (set by the loop
    through ``for_mesh``) keeps foreground partners on the same device."""

    variant: str = "blocks"
    classes: int = 5
    foreground: str = "pair"
    fg_ratio: float = 0.7
    block_min: tuple[int, int, int] = (8, 8, 8)
    block_max: tuple[int, int, int] = (32, 32, 32)
    box_count: tuple[int, int] = (10, 40)
    box_min: tuple[int, int, int] = (8, 8, 8)
    box_max: tuple[int, int, int] = (40, 80, 80)
    dice: float = 0.5
    ce: float = 0.5
    deep_supervision: tuple[float, ...] | None = None
    batch_shards: int = 1

    def __post_init__(self):
        if self.variant not in ("blocks", "boxes"):
            raise ValueError(f"objective.variant must be 'blocks' or 'boxes', got {self.variant!r}")
        if self.foreground not in ("pair", "roll"):
            raise ValueError(f"objective.foreground must be 'pair' or 'roll', got {self.foreground!r}")
        if self.classes < 2:
            raise ValueError(f"objective.classes must be at least 2 (K + 1), got {self.classes}")
        lo, hi = (self.block_min, self.block_max) if self.variant == "blocks" else (self.box_min, self.box_max)
        if len(lo) != 3 or len(hi) != 3 or any(a < 1 or a > b for a, b in zip(lo, hi)):
            raise ValueError(f"objective: {self.variant} sizes need 1 <= min <= max on 3 axes, "
                             f"got {tuple(lo)} .. {tuple(hi)}")

    def for_mesh(self, batch_shards: int) -> "VolumeFusion":
        return dataclasses.replace(self, batch_shards=batch_shards)

    def layout(self, key: jax.Array, spatial: tuple[int, int, int]) -> dict:
        """One sample's random draws (``block_layout`` or ``box_layout``)."""
        if self.variant == "blocks":
            if any(n < lo for n, lo in zip(spatial, self.block_min)):
                raise ValueError(f"crop {spatial} is smaller than objective.block_min {self.block_min}")
            return block_layout(key, spatial, classes=self.classes, fg_ratio=self.fg_ratio,
                                block_min=self.block_min, block_max=self.block_max)
        return box_layout(key, spatial, classes=self.classes, box_count=self.box_count,
                          box_min=self.box_min, box_max=self.box_max)

    def labels(self, key: jax.Array, batch: int, spatial: tuple[int, int, int]) -> jax.Array:
        """Label maps (B, D, H, W) int32, one independent draw per sample."""
        render = render_blocks if self.variant == "blocks" else render_boxes
        return jax.vmap(lambda k: render(self.layout(k, spatial), spatial))(
            jax.random.split(key, batch))

    def partners(self, images: jax.Array) -> jax.Array:
        """The foreground image of every sample (B, ..., C), taken within its device's slice."""
        b = images.shape[0]
        if b % self.batch_shards:
            raise ValueError(f"batch {b} does not split over {self.batch_shards} devices")
        local = b // self.batch_shards
        x = images.reshape(self.batch_shards, local, *images.shape[1:])
        if self.foreground == "pair":
            if local % 2:
                raise ValueError(f"foreground='pair' needs an even number of samples per device "
                                 f"(crops_per_volume=2), got {local}")
            x = x.reshape(self.batch_shards, local // 2, 2, *images.shape[1:])[:, :, ::-1]
        else:
            x = jnp.roll(x, 1, axis=1)
        return x.reshape(images.shape)

    def fuse_batch(self, key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(fused images, labels) for a batch of crops (B, D, H, W, C)."""
        labels = self.labels(key, images.shape[0], tuple(images.shape[1:4]))
        return fuse(images, self.partners(images), labels, self.classes), labels

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        fused, labels = self.fuse_batch(key, batch["image"].astype(jnp.float32))
        return self.loss(apply(fused), labels)

    def loss(self, outputs, labels: jax.Array) -> tuple[jax.Array, dict]:
        outputs = upsampled_outputs(outputs, labels.shape[1:4])
        onehot = jax.nn.one_hot(labels, self.classes, dtype=jnp.float32)
        weights = self.deep_supervision or tuple(0.5 ** i for i in range(len(outputs)))
        if len(weights) != len(outputs):
            raise ValueError(f"objective.deep_supervision has {len(weights)} weights for "
                             f"{len(outputs)} outputs")
        total, terms = 0.0, {"dice_loss": 0.0, "ce_loss": 0.0}
        for w, logits in zip(weights, outputs):
            d, c = softmax_dice_ce(logits, onehot)
            total += w * (self.dice * d + self.ce * c)
            terms = {"dice_loss": terms["dice_loss"] + w * d, "ce_loss": terms["ce_loss"] + w * c}
        norm = sum(weights)
        loss = total / norm
        probs = jax.nn.softmax(outputs[0].astype(jnp.float32), -1)
        metrics = Segmentation(kind="softmax").metrics(probs, onehot)
        return loss, {"loss": loss, **{k: v / norm for k, v in terms.items()}, **metrics,
                      "fused_fraction": jnp.mean((labels > 0).astype(jnp.float32))}
