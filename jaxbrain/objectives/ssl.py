"""BrainSegFounder's self-supervised objective: rotation + contrastive + inpainting.

Augmentation runs on device inside the jitted step, vectorised over the batch (no Python loop
per sample). For each crop, two views are made independently:

1. rotation by k * 90 degrees, k uniform in {0, 1, 2, 3}, in the plane of the last two spatial
   axes (H, W of the channels-last (B, D, H, W, C) layout; the original's ``rot90(k, (2, 3))``
   on (C, D, H, W)); the label is k;
2. cutout: boxes of Gaussian noise, each rescaled to [0, 1] over its own voxels and channels,
   are painted one after another until their summed volume reaches a fraction of the volume
   drawn uniformly from [0, ``max_drop``); box corners uniform in [0, n - 5% n), sides uniform
   in [5% n, 25% n) voxels and cut at the border (``box_min`` / ``box_max``);
3. with probability (L - 1) / L (L = samples on the same device), a second pass of boxes
   pastes the voxels of another sample of the device's batch (after its own first pass).

The reconstruction target is the rotated, un-masked crop. Losses: cross-entropy of the
rotation logits, NT-Xent (temperature 0.5) between the two views' contrastive embeddings with
the other 2N - 1 embeddings as negatives, and mean absolute reconstruction error; weighted
by ``rotation``, ``contrastive`` and ``reconstruction``. ``negatives="global"`` takes the
negatives from the whole global batch (all data-parallel devices); ``"local"`` from the
device's own samples only, as the original (per-GPU) training did.

Boxes are drawn up to ``max_boxes`` per pass, a static bound for the compiled loop (which
stops as soon as every sample has reached its fraction); by default twice the mean number
the largest fraction takes (``boxes_needed``: 216 for 96^3 crops, about 100 needed).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax


def rotate(x: jax.Array, k: jax.Array) -> jax.Array:
    """One sample (D, H, W, C) rotated by k * 90 degrees in the (H, W) plane."""
    return jax.lax.switch(k, [lambda v, i=i: jnp.rot90(v, i, axes=(1, 2)) for i in range(4)], x)


def _box_bounds(n: int, box_min: float, box_max: float) -> tuple[int, int, int]:
    """(tolerance, exclusive upper bound of a side, static window size) for an axis of n."""
    tol = int(box_min * n)
    hi = max(int(box_max * n), tol + 1)
    return tol, hi, min(max(hi - 1, 1), n)


def boxes_needed(spatial, max_drop: float, box_min: float, box_max: float) -> int:
    """Twice the mean number of boxes that cover the largest drawn fraction (the bound the
    compiled loop needs to be safe)."""
    frac = 1.0
    for n in spatial:
        tol, hi, _ = _box_bounds(n, box_min, box_max)
        frac *= max((tol + hi - 1) / 2, 0.5) / n
    return int(math.ceil(2 * max_drop / frac))


def draw_boxes(key, spatial: tuple[int, int, int], *, max_drop: float, box_min: float,
               box_max: float, max_boxes: int):
    """Boxes of one pass for one sample: (starts (M, 3), ends (M, 3), active (M,), target
    voxel count). Box j is painted iff the boxes before it cover fewer than the target."""
    k_frac, k_start, k_size = jax.random.split(key, 3)
    starts, ends = [], []
    for axis, n in enumerate(spatial):
        tol, hi, _ = _box_bounds(n, box_min, box_max)
        s = jax.random.randint(jax.random.fold_in(k_start, axis), (max_boxes,), 0, max(n - tol, 1))
        size = jax.random.randint(jax.random.fold_in(k_size, axis), (max_boxes,), tol, hi)
        starts.append(s)
        ends.append(jnp.minimum(s + size, n))
    starts, ends = jnp.stack(starts, -1), jnp.stack(ends, -1)
    target = jax.random.uniform(k_frac, (), minval=0.0, maxval=max_drop) * math.prod(spatial)
    volume = jnp.prod(ends - starts, -1).astype(jnp.float32)
    before = jnp.cumsum(volume) - volume
    return starts, ends, before < target, target


def cutout(x: jax.Array, key: jax.Array, source: jax.Array | None = None, *,
           max_drop: float = 0.3, box_min: float = 0.05, box_max: float = 0.25,
           max_boxes: int | None = None) -> jax.Array:
    """One sample (D, H, W, C): boxes of rescaled Gaussian noise (``source=None``) or of
    ``source``'s voxels painted in order until the drawn fraction is covered."""
    spatial = x.shape[:3]
    window = tuple(_box_bounds(n, box_min, box_max)[2] for n in spatial)
    needed = boxes_needed(spatial, max_drop, box_min, box_max)
    if max_boxes is None:
        max_boxes = needed
    elif max_boxes < needed:
        raise ValueError(f"objective.max_boxes={max_boxes} is too few for crops of {spatial}: "
                         f"covering {max_drop:.0%} takes about {needed // 2} boxes of the "
                         f"configured sizes; use max_boxes >= {needed}")
    k_boxes, k_noise = jax.random.split(key)
    starts, ends, active, _ = draw_boxes(k_boxes, spatial, max_drop=max_drop, box_min=box_min,
                                         box_max=box_max, max_boxes=max_boxes)

    def paint(j, img):
        corner = jnp.clip(starts[j], 0, jnp.asarray(spatial) - jnp.asarray(window))
        index = (corner[0], corner[1], corner[2], 0)
        size = window + (x.shape[3],)
        region = jax.lax.dynamic_slice(img, index, size)
        inside = active[j]
        masks = []
        for axis in range(3):
            pos = corner[axis] + jnp.arange(window[axis])
            masks.append((pos >= starts[j, axis]) & (pos < ends[j, axis]))
        inside = inside & masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]
        inside = inside[..., None]
        if source is None:
            g = jax.random.normal(jax.random.fold_in(k_noise, j), size, jnp.float32)
            lo = jnp.min(jnp.where(inside, g, jnp.inf))
            hi = jnp.max(jnp.where(inside, g, -jnp.inf))
            values = jnp.clip((g - lo) / jnp.maximum(hi - lo, 1e-12), 0.0, 1.0)
        else:
            values = jax.lax.dynamic_slice(source, index, size)
        region = jnp.where(inside, values.astype(img.dtype), region)
        return jax.lax.dynamic_update_slice(img, region, index)

    def cond(carry):
        j, _ = carry
        return (j < max_boxes) & active[jnp.minimum(j, max_boxes - 1)]

    def body(carry):
        j, img = carry
        return j + 1, paint(j, img)

    return jax.lax.while_loop(cond, body, (jnp.int32(0), x))[1]


def make_views(x: jax.Array, key: jax.Array, *, groups: int = 1, **cutout_args):
    """One augmented view of every crop in (B, D, H, W, C): returns (rotated crops (the
    reconstruction targets), augmented crops, rotation labels (B,)). Partners for the pasting
    pass are drawn within each of ``groups`` contiguous blocks of the batch (the samples one
    device holds)."""
    b = x.shape[0]
    if b % groups:
        raise ValueError(f"batch {b} is not divisible into {groups} device groups")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotation in the (H, W) plane needs H == W, got crop {x.shape[1:4]}")
    local = b // groups
    k_rot, k_cut, k_pair, k_paste = jax.random.split(key, 4)
    labels = jax.random.randint(k_rot, (b,), 0, 4)
    rotated = jax.vmap(rotate)(x, labels)
    first = jax.vmap(lambda v, k: cutout(v, k, **cutout_args))(rotated, jax.random.split(k_cut, b))
    partner = jax.random.randint(k_pair, (groups, local), 0, local)
    grouped = first.reshape((groups, local) + first.shape[1:])
    index = partner.reshape((groups, local) + (1,) * (first.ndim - 1))
    source = jnp.take_along_axis(grouped, index, axis=1).reshape(first.shape)
    second = jax.vmap(lambda v, k, s: cutout(v, k, s, **cutout_args))(
        first, jax.random.split(k_paste, b), source)
    pasted = (partner != jnp.arange(local)[None]).reshape(b)
    augmented = jnp.where(pasted[:, None, None, None, None], second, first)
    return rotated, augmented, labels


def nt_xent(a: jax.Array, b: jax.Array, temperature: float, groups: int = 1) -> jax.Array:
    """NT-Xent between paired embeddings a[i] <-> b[i] (N, F): for each of the 2N embeddings,
    -log(exp(sim(pos) / t) / sum over the 2N - 1 others of exp(sim / t)), cosine similarity,
    averaged; negatives within each of ``groups`` contiguous blocks of the batch."""
    n, f = a.shape
    a = a.reshape(groups, n // groups, f)
    b = b.reshape(groups, n // groups, f)
    z = jnp.concatenate([a, b], axis=1)  # (G, 2L, F): the original's [z_i; z_j] per device
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    sim = jnp.einsum("gif,gjf->gij", z, z, precision=jax.lax.Precision.HIGHEST) / temperature
    m = z.shape[1]
    eye = jnp.eye(m, dtype=bool)
    pos_index = (jnp.arange(m) + m // 2) % m
    pos = jnp.take_along_axis(sim, pos_index[None, :, None], axis=2)[..., 0]
    denom = jax.nn.logsumexp(jnp.where(eye[None], -jnp.inf, sim), axis=-1)
    return jnp.mean(denom - pos)


@dataclasses.dataclass(frozen=True)
class SSL:
    """Rotation + contrastive + reconstruction pretraining (see the module docstring)."""

    rotation: float = 1.0
    contrastive: float = 1.0
    reconstruction: float = 1.0
    temperature: float = 0.5
    negatives: str = "global"
    max_drop: float = 0.3
    box_min: float = 0.05
    box_max: float = 0.25
    max_boxes: int | None = None  # None: boxes_needed() for the crop size
    shards: int = 1  # devices the batch is split over (set by the training loop)

    def __post_init__(self):
        if self.negatives not in ("global", "local"):
            raise ValueError(f"objective.negatives: expected 'global' or 'local', got "
                             f"{self.negatives!r}")

    def for_mesh(self, batch_shards: int) -> "SSL":
        return dataclasses.replace(self, shards=batch_shards)

    def views(self, x: jax.Array, key: jax.Array):
        """Two views of each crop, interleaved (B, 2, ...) so each device keeps its own."""
        kw = dict(groups=self.shards, max_drop=self.max_drop, box_min=self.box_min,
                  box_max=self.box_max, max_boxes=self.max_boxes)
        k1, k2 = jax.random.split(key)
        r1, a1, l1 = make_views(x, k1, **kw)
        r2, a2, l2 = make_views(x, k2, **kw)
        return (jnp.stack([r1, r2], 1), jnp.stack([a1, a2], 1), jnp.stack([l1, l2], 1))

    def compute(self, apply, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        x = batch["image"]
        b = x.shape[0]
        targets, inputs, labels = self.views(x, key)
        out = apply(inputs.reshape((2 * b,) + x.shape[1:]))
        return self.loss(out, targets.reshape((2 * b,) + x.shape[1:]), labels.reshape(2 * b))

    def loss(self, out: dict, targets: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
        """``out``, ``targets`` and ``labels`` over 2B rows, views of a crop adjacent."""
        rot = optax.softmax_cross_entropy_with_integer_labels(out["rotation"], labels).mean()
        emb = out["contrastive"].reshape(-1, 2, out["contrastive"].shape[-1])
        groups = self.shards if self.negatives == "local" else 1
        con = nt_xent(emb[:, 0], emb[:, 1], self.temperature, groups)
        rec = jnp.mean(jnp.abs(out["reconstruction"] - targets.astype(jnp.float32)))
        total = self.rotation * rot + self.contrastive * con + self.reconstruction * rec
        acc = jnp.mean(jnp.argmax(out["rotation"], -1) == labels)
        return total, {"loss": total, "rotation_loss": rot, "contrastive_loss": con,
                       "reconstruction_loss": rec, "rotation_acc": acc}
