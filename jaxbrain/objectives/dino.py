"""Self-distillation with an EMA teacher (DINO / iBOT / KoLeo / Gram anchoring): the
DINOv2 / DINOv3 recipe that BrainDINO pretrains its slice encoder with, as one objective.

The model is :class:`jaxbrain.models.dino_heads.DinoStudent` (encoder + DINO head + iBOT
head). The teacher is an EMA copy of all its parameters kept in the objective state
(``state["teacher"]``), updated after every optimizer step with momentum ``m(step)``, a
cosine from ``momentum`` (0.992) to ``final_momentum`` (1) over ``total_steps``
(``teacher = m * teacher + (1 - m) * student``); it sees the global crops only, in
inference mode (no drop path), without gradient.

Schedules follow the originals' ``CosineScheduler`` exactly (:func:`cosine_schedule`): an
optional frozen stretch (value 0), a warm-up ``linspace(start, base, warmup)`` that
includes its end point, then ``final + (base - final) / 2 * (1 + cos(pi * i / n))`` over
the remaining n steps, ``final`` from ``total`` on. The teacher temperature is
``warmup_teacher_temp`` (0.04) -> ``teacher_temp`` (0.07) linearly over
``teacher_temp_warmup_steps``, then constant.

Multi-crop, on device, per sample and crop from the step key (DINOv2's
``DataAugmentationDINO`` with MRI intensities in place of colour):

1. random resized crop as torchvision's ``RandomResizedCrop``: up to 10 draws of an area
   fraction uniform in ``global_scale`` (0.32-1) / ``local_scale`` (0.05-0.32) and a
   log-uniform aspect ratio in ``ratio`` (3/4-4/3), rounded sides, the first draw that fits
   taken with a uniform offset, else the central crop of the whole image clamped to the
   ratio range; resized to ``global_size`` / ``local_size`` bilinearly with antialiasing
   (``jax.image.scale_and_translate``, pixel centres aligned as torchvision's);
2. horizontal flip with probability ``flip_p`` (0.5);
3. with probability ``intensity_p`` (0.8, the originals' colour-jitter probability), for
   z-scored intensities: brightness ``x + u``, u uniform in +-``brightness``; contrast
   ``mean + (x - mean) * c``, c uniform in 1 +- ``contrast``; gamma: the crop mapped to
   [0, 1] by its range, raised to g log-uniform in ``gamma``, mapped back (fixed order);
4. Gaussian blur (kernel ``blur_kernel`` = 9 taps, sigma uniform in ``blur_sigma``
   (0.1-2), reflect padding, as torchvision's) with probability ``blur_p``: first global
   crop 1.0, second 0.1, locals 0.5;
5. solarisation (:func:`solarize`) with probability ``solarize_p`` (first global, second
   global, locals), off by default. The originals apply ``RandomSolarize(threshold=128,
   p=0.2)`` after the blur of the second global crop only (DINOv2 and DINOv3 alike:
   ``solarize_p=(0.0, 0.2, 0.0)``), torchvision's ``x -> 255 - x`` for ``x >= 128`` on
   uint8. z-scored slices have no fixed range, so the rule is applied to the crop's own
   range [lo, hi] (what the gamma jitter maps to [0, 1]): ``x -> lo + hi - x`` for
   ``x >= lo + solarize_threshold * (hi - lo)``, ``solarize_threshold`` = 128 / 255;
   torchvision's rule exactly when the crop spans 0-255, and like it the result stays in
   the range. Off because on grey MRI it varies no colour: it reverses the order of the
   brighter half of the intensities (on T1 white matter drops below grey matter, as on
   T2; enhancing tumour and FLAIR lesions become the darkest tissue), so the student
   would learn to ignore the tissue contrast that tells sequences and lesions apart,
   which the downstream tasks (sequence type, segmentation) need.

No colour jitter (grey MRI); no ImageNet normalisation (BrainDINO feeds z-scored slices).

Losses (DINOv3's ``compute_losses``):

- DINO on the CLS token: teacher probabilities by centring (``centering="centering"``:
  ``softmax((t - center) / T)``, the centre an EMA (``center_momentum`` 0.9) of the batch
  mean of the teacher's logits, updated after the step) or Sinkhorn-Knopp
  (``"sinkhorn_knopp"``, ``sinkhorn_iterations`` 3; the originals' normalisations in the
  log domain, :func:`sinkhorn_knopp`, so that no prototype underflows). Under ``jit`` the arrays are the
  global batch however it is sharded over the mesh, so the batch mean and the Sinkhorn
  sums are over the global batch: the originals' ``all_reduce`` semantics. Cross-entropy
  with the student's ``log_softmax(s / student_temp)`` (0.1), averaged over the local crops
  x teacher crops pairs (``dino_local``) and over the ordered pairs of different global
  crops (``dino_global``); weighted by their shares of the pairs:
  local ``n_g n_l / (n_g (n_g - 1) + n_g n_l)``, global the rest.
- iBOT on masked patches of the student's global crops: ``int(mask_probability * n_g B)``
  crops are masked, their ratios stratified over ``mask_ratio`` (DINOv2's collate: the i-th
  ratio uniform in the i-th of n equal sub-intervals, int(N * ratio) patches), shuffled over
  the crops; the patches of a crop are masked block-wise as DINOv2's ``MaskingGenerator``
  (``mask_mode="block"``, :func:`block_mask`, a ``lax.while_loop`` on device; rectangles of
  at least 4 patches, aspect 0.3-3.3, at most half the grid each) or uniformly at random
  (``"random"``: exactly int(N * ratio) patches). The masked patches are gathered into a static buffer of the originals' upper
  bound (``sum int(N * ratio_max_i)``), padding weighted 0. Teacher probabilities as for
  DINO (own centre; Sinkhorn over the masked patches of the global batch); the loss is
  ``-sum_p w_p CE_p / (n_g B)`` with ``w_p`` = 1 / (masked patches of its crop).
  The iBOT centre is the mean over the real masked patches (DINOv2 also averages its
  padding rows, an artefact of its buffer).
- KoLeo (``koleo_weight`` 0.1) on the student's L2-normalised CLS of each global crop,
  ``-mean log(d_nn + 1e-8)`` with the nearest neighbour by inner product, within groups of
  ``koleo_group`` samples (0: each device's batch, as the originals compute it per GPU);
  summed over the global crops.
- Gram anchoring (``gram_weight`` > 0): MSE between the patch-similarity matrices of the
  student's global-crop patches and a frozen Gram teacher's (features L2-normalised;
  per image with ``gram_img_level``, else over each device's batch), DINOv3's ``GramLoss``.
  The Gram teacher (``state["gram"]``) is a copy of the EMA teacher, refreshed every
  ``gram_every`` steps from ``gram_start`` on; the loss counts from ``gram_start``.

Total: ``dino_weight * (local share * dino_local + global share * dino_global) +
koleo_weight * sum_crops koleo + ibot_weight * ibot + gram_weight * gram``. Metrics:
dino_local, dino_global, ibot, koleo (mean over crops), gram, teacher_temp, momentum.

State: ``{"teacher", "center" (K,), "ibot_center" (K',)[, "gram"]}``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

CENTERINGS = ("centering", "sinkhorn_knopp")
MASK_MODES = ("block", "random")


# ----------------------------------------------------------------------------------------
# Schedules.


def cosine_schedule(step, base: float, final: float, total: int, warmup: int = 0,
                    start_warmup: float = 0.0, freeze: int = 0):
    """DINOv2 / DINOv3 ``CosineScheduler(base, final, total, warmup, start_warmup, freeze)``
    at ``step`` (see the module docstring), as a jnp scalar."""
    step = jnp.asarray(step, jnp.float32)
    n = max(int(total) - int(warmup) - int(freeze), 0)
    i = step - freeze - warmup
    cos = final + 0.5 * (base - final) * (1 + jnp.cos(jnp.pi * i / max(n, 1)))
    if warmup > 1:
        warm = start_warmup + (base - start_warmup) * (step - freeze) / (warmup - 1)
    else:  # linspace(start, base, 1) == [start]
        warm = jnp.full((), start_warmup, jnp.float32)
    out = jnp.where(step < freeze, 0.0, jnp.where(step < freeze + warmup, warm, cos))
    return jnp.where(step >= total, final, out)


# ----------------------------------------------------------------------------------------
# Multi-crop.


def crop_box(key, height: int, width: int, scale, ratio, attempts: int = 10):
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) int32 scalars."""
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = height * width
    target = area * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=log_lo, maxval=log_hi))
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = fits.any()
    h = jnp.where(found, h[first], fh)
    w = jnp.where(found, w[first], fw)
    top = jnp.where(found, jnp.floor(jax.random.uniform(k_top) * (height - h + 1)),
                    (height - fh) // 2).astype(jnp.int32)
    left = jnp.where(found, jnp.floor(jax.random.uniform(k_left) * (width - w + 1)),
                     (width - fw) // 2).astype(jnp.int32)
    return top, left, h, w


def resized_crop(image, box, size: int):
    """(H, W, C) -> the box resized to (size, size, C), bilinear with antialiasing."""
    top, left, h, w = (jnp.asarray(v, jnp.float32) for v in box)
    scale = jnp.stack([size / h, size / w])
    translation = -jnp.stack([top, left]) * scale
    return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                         translation, method="linear", antialias=True)


def block_mask(key, target, height: int, width: int, *, min_patches: float = 4,
               max_patches: float | None = None, min_aspect: float = 0.3, attempts: int = 10):
    """DINOv2's ``MaskingGenerator(input_size=(height, width), max_num_patches=max_patches)``
    called with ``target`` patches, as a ``lax.while_loop``: rectangles of area uniform in
    [min_patches, room] (room = min(target - masked, max_patches)) and log-uniform aspect
    ratio in [min_aspect, 1 / min_aspect], sides rounded, placed uniformly, are added while
    they bring 1 .. room new patches; up to ``attempts`` draws per rectangle (drawn at once,
    the first that qualifies taken: the original's sequential draws leave the mask unchanged
    until one qualifies), stopping at ``target`` or when no draw qualifies. (H, W) bool."""
    max_patches = 0.5 * height * width if max_patches is None else max_patches
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    target = jnp.asarray(target, jnp.int32)

    def body(carry):
        mask, count, it, _ = carry
        k_area, k_ratio, k_top, k_left = jax.random.split(jax.random.fold_in(key, it), 4)
        room = jnp.minimum(target - count, max_patches).astype(jnp.float32)
        area = min_patches + (room - min_patches) * jax.random.uniform(k_area, (attempts,))
        aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=log_lo, maxval=log_hi))
        h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        top = jnp.floor(jax.random.uniform(k_top, (attempts,)) * (height - h + 1)).astype(jnp.int32)
        left = jnp.floor(jax.random.uniform(k_left, (attempts,)) * (width - w + 1)).astype(jnp.int32)
        rect = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
                & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
        new = (rect & ~mask[None]).sum((1, 2))
        ok = (w < width) & (h < height) & (new > 0) & (new <= room)
        first, found = jnp.argmax(ok), ok.any()
        mask = jnp.where(found, mask | rect[first], mask)
        return mask, count + jnp.where(found, new[first], 0), it + 1, ~found

    def cond(carry):
        _, count, _, stalled = carry
        return (count < target) & ~stalled

    init = (jnp.zeros((height, width), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.zeros((), bool))
    return jax.lax.while_loop(cond, body, init)[0]


def gaussian_blur(image, sigma, taps: int = 9):
    """torchvision ``gaussian_blur`` (separable, reflect padding) of (H, W, C)."""
    x = jnp.arange(taps, dtype=jnp.float32) - (taps - 1) / 2
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    r = taps // 2
    h, w = image.shape[:2]
    padded = jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="reflect")
    image = sum(k[i] * padded[i:i + h] for i in range(taps))
    padded = jnp.pad(image, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * padded[:, i:i + w] for i in range(taps))


def solarize(image, threshold: float = 128 / 255):
    """torchvision's ``solarize`` (``x -> bound - x`` for ``x >= threshold``) on the range
    [lo, hi] of ``image`` instead of [0, bound]: ``x -> lo + hi - x`` where
    ``x >= lo + threshold * (hi - lo)``; a constant image is returned as it is."""
    lo, hi = image.min(), image.max()
    return jnp.where(image >= lo + threshold * (hi - lo), lo + hi - image, image)


@dataclasses.dataclass(frozen=True)
class Dino:
    """The self-distillation objective; fields as in the module docstring."""

    total_steps: int = 0
    # crops
    global_crops: int = 2
    local_crops: int = 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple = (0.32, 1.0)
    local_scale: tuple = (0.05, 0.32)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    intensity_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: tuple = (0.7, 1.5)
    blur_p: tuple = (1.0, 0.1, 0.5)  # first global, second global, local crops
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel: int = 9
    solarize_p: tuple = (0.0, 0.0, 0.0)  # as blur_p; the originals' (0.0, 0.2, 0.0)
    solarize_threshold: float = 128 / 255  # fraction of the crop's range
    # distillation
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 0
    momentum: float = 0.992
    final_momentum: float = 1.0
    centering: str = "sinkhorn_knopp"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    mask_probability: float = 0.5
    mask_ratio: tuple = (0.1, 0.5)
    mask_mode: str = "block"
    koleo_weight: float = 0.1
    koleo_group: int = 0
    gram_weight: float = 0.0
    gram_every: int = 0
    gram_start: int = 0
    gram_img_level: bool = False
    batch_shards: int = 1

    def __post_init__(self):
        if self.centering not in CENTERINGS:
            raise ValueError(f"objective.centering={self.centering!r}: expected one of {CENTERINGS}")
        if self.total_steps < 1:
            raise ValueError("objective.total_steps must be the run's total_steps (the momentum "
                             f"cosine runs over it), got {self.total_steps}")
        if self.global_crops < 1:
            raise ValueError(f"objective.global_crops must be >= 1, got {self.global_crops}")
        for name in ("blur_p", "solarize_p"):
            probs = getattr(self, name)
            if len(probs) != 3 or not all(0.0 <= p <= 1.0 for p in probs):
                raise ValueError(f"objective.{name} must be 3 probabilities (first global, "
                                 f"second global, local), got {probs}")
        if not 0.0 <= self.solarize_threshold <= 1.0:
            raise ValueError("objective.solarize_threshold is a fraction of the crop's intensity "
                             f"range, expected 0 <= value <= 1, got {self.solarize_threshold}")
        if self.gram_weight and self.gram_every < 1:
            raise ValueError("objective.gram_weight > 0 needs gram_every >= 1 (steps between "
                             "refreshes of the Gram teacher)")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"objective.mask_mode={self.mask_mode!r}: expected one of {MASK_MODES}")
        lo, hi = self.mask_ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"objective.mask_ratio={self.mask_ratio}: expected 0 <= min <= max <= 1")

    # -- loop protocol ---------------------------------------------------------------------

    def for_mesh(self, batch_shards: int) -> "Dino":
        return dataclasses.replace(self, batch_shards=batch_shards)

    def model_input(self, spec: dict) -> jax.ShapeDtypeStruct:
        """The model is initialised on a global crop."""
        x = spec["image"]
        return jax.ShapeDtypeStruct((x.shape[0], self.global_size, self.global_size, x.shape[-1]),
                                    x.dtype)

    def init_state(self, params):
        copy = lambda tree: jax.tree_util.tree_map(lambda p: p, tree)  # noqa: E731
        state = {"teacher": copy(params),
                 "center": jnp.zeros((_prototypes(params, "dino_head"),), jnp.float32),
                 "ibot_center": jnp.zeros((_prototypes(params, _ibot_head(params)),), jnp.float32)}
        if self.gram_weight:
            state["gram"] = copy(params)
        return state

    def update_state(self, state, *, params, aux, step):
        m = self.momentum_at(step)
        teacher = jax.tree_util.tree_map(lambda t, s: t * m + s * (1 - m), state["teacher"], params)
        cm = self.center_momentum
        new = dict(state, teacher=teacher,
                   center=state["center"] * cm + aux["center"] * (1 - cm),
                   ibot_center=state["ibot_center"] * cm + aux["ibot_center"] * (1 - cm))
        if self.gram_weight:
            done = step + 1
            refresh = (done >= self.gram_start) & ((done - self.gram_start) % self.gram_every == 0)
            new["gram"] = jax.tree_util.tree_map(lambda g, t: jnp.where(refresh, t, g),
                                                 state["gram"], teacher)
        return new

    # -- schedules -------------------------------------------------------------------------

    def momentum_at(self, step):
        return cosine_schedule(step, self.momentum, self.final_momentum, self.total_steps)

    def teacher_temp_at(self, step):
        return cosine_schedule(step, self.teacher_temp, self.teacher_temp, self.total_steps,
                               warmup=self.teacher_temp_warmup_steps,
                               start_warmup=self.warmup_teacher_temp)

    # -- crops and masks -------------------------------------------------------------------

    def crop(self, image, key, size: int, scale, blur_p, solarize_p=0.0):
        """One augmented crop (size, size, C) of one image (H, W, C)."""
        k_box, k_flip, k_int, k_b, k_c, k_g, k_blur, k_sigma, k_solar = jax.random.split(key, 9)
        h, w = image.shape[:2]
        x = resized_crop(image.astype(jnp.float32), crop_box(k_box, h, w, scale, self.ratio), size)
        x = jnp.where(jax.random.uniform(k_flip) < self.flip_p, x[:, ::-1], x)
        if self.intensity_p:
            y = x + jax.random.uniform(k_b, minval=-self.brightness, maxval=self.brightness)
            mean = y.mean()
            y = mean + (y - mean) * jax.random.uniform(k_c, minval=1 - self.contrast,
                                                       maxval=1 + self.contrast)
            g = jnp.exp(jax.random.uniform(k_g, minval=math.log(self.gamma[0]),
                                           maxval=math.log(self.gamma[1])))
            lo, hi = y.min(), y.max()
            span = jnp.maximum(hi - lo, 1e-6)
            y = lo + span * ((y - lo) / span) ** g
            x = jnp.where(jax.random.uniform(k_int) < self.intensity_p, y, x)
        sigma = jax.random.uniform(k_sigma, minval=self.blur_sigma[0], maxval=self.blur_sigma[1])
        blurred = gaussian_blur(x, sigma, self.blur_kernel)
        x = jnp.where(jax.random.uniform(k_blur) < blur_p, blurred, x)
        if any(self.solarize_p):
            solarized = solarize(x, self.solarize_threshold)
            x = jnp.where(jax.random.uniform(k_solar) < solarize_p, solarized, x)
        return x

    def crops(self, images, key):
        """(global crops (n_g, B, S, S, C), local crops (n_l, B, s, s, C) or None)."""
        b = images.shape[0]
        k_g, k_l = jax.random.split(key)
        # [blur p, solarisation p] of a crop: 0 the first global crop, 1 the others, 2 locals.
        probs = lambda i: [self.blur_p[i], self.solarize_p[i]]  # noqa: E731
        many = lambda size, scale: jax.vmap(jax.vmap(  # noqa: E731
            lambda k, im, p: self.crop(im, k, size, scale, p[0], p[1]), (0, 0, None)), (0, None, 0))
        keys = jax.random.split(k_g, (self.global_crops, b))
        p = np.array([probs(0)] + [probs(1)] * (self.global_crops - 1), np.float32)
        g = many(self.global_size, self.global_scale)(keys, images, jnp.asarray(p))
        if not self.local_crops:
            return g, None
        keys = jax.random.split(k_l, (self.local_crops, b))
        p = np.array([probs(2)] * self.local_crops, np.float32)
        return g, many(self.local_size, self.local_scale)(keys, images, jnp.asarray(p))

    def masks(self, key, n_images: int, n_patches: int):
        """(masks (n_images, N) bool, flat indices of the masked patches (U,), their weights
        (U,): 1 / masked patches of their crop, 0 for the padding of the static buffer)."""
        n_masked = int(n_images * self.mask_probability)
        edges = np.linspace(self.mask_ratio[0], self.mask_ratio[1], n_masked + 1)
        upper = max(int(sum(int(n_patches * e) for e in edges[1:])), 1)
        k_ratio, k_order, k_pick = jax.random.split(key, 3)
        ratio = jax.random.uniform(k_ratio, (n_masked,), minval=edges[:-1], maxval=edges[1:])
        counts = jnp.concatenate([jnp.floor(n_patches * ratio).astype(jnp.int32),
                                  jnp.zeros((n_images - n_masked,), jnp.int32)])
        counts = jax.random.permutation(k_order, counts)
        side = math.isqrt(n_patches)
        if self.mask_mode == "block" and side * side == n_patches:
            keys = jax.random.split(k_pick, n_images)
            masks = jax.vmap(lambda k, t: block_mask(k, t, side, side).reshape(-1))(keys, counts)
            counts = masks.sum(1).astype(jnp.int32)  # a stalled generator masks fewer
        elif self.mask_mode == "block":
            raise ValueError(f"objective.mask_mode='block' needs a square patch grid, got "
                             f"{n_patches} patches (use mask_mode='random')")
        else:
            scores = jax.random.uniform(k_pick, (n_images, n_patches))
            ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
            masks = ranks < counts[:, None]
        flat = masks.reshape(-1)
        index = jnp.nonzero(flat, size=upper, fill_value=0)[0]
        valid = jnp.arange(upper) < flat.sum()
        per_crop = jnp.maximum(counts, 1).astype(jnp.float32)
        weight = jnp.where(valid, 1.0 / per_crop[index // n_patches], 0.0)
        return masks, index, weight

    # -- losses ----------------------------------------------------------------------------

    def teacher_probs(self, logits, temp, center, valid=None):
        """Teacher targets of (M, K) logits: centred softmax or Sinkhorn-Knopp over all
        rows (the global batch); ``valid`` (M,) excludes padding rows."""
        logits = logits.astype(jnp.float32)
        if self.centering == "centering":
            return jax.nn.softmax((logits - center) / temp, axis=-1)
        return sinkhorn_knopp(logits, temp, self.sinkhorn_iterations, valid)

    def compute(self, apply, batch, key, *, state, step):
        images = batch["image"]
        n_g, n_l = self.global_crops, self.local_crops
        k_crop, k_mask = jax.random.split(key)
        g, loc = self.crops(images, k_crop)
        b = images.shape[0]
        g_flat = g.reshape(n_g * b, *g.shape[2:])
        patch = _patch_count(apply, g_flat[:1])
        masks, index, weight = self.masks(k_mask, n_g * b, patch)
        valid = weight > 0

        student = apply(g_flat, masks=masks, patch_index=index)
        teacher = jax.lax.stop_gradient(
            apply(g_flat, {"params": state["teacher"]}, train=False, patch_index=index))
        temp = self.teacher_temp_at(step)
        t_cls = self.teacher_probs(teacher["cls_logits"], temp, state["center"])
        t_cls = t_cls.reshape(n_g, b, -1)
        s_global = jax.nn.log_softmax(
            student["cls_logits"].astype(jnp.float32).reshape(n_g, b, -1) / self.student_temp, -1)
        metrics = {}
        # DINO: every student crop against every teacher crop of another view.
        pairs = -jnp.einsum("sbk,tbk->st", s_global, t_cls) / b
        global_terms = n_g * (n_g - 1)
        dino_global = ((pairs.sum() - jnp.trace(pairs)) / global_terms if global_terms
                       else jnp.zeros(()))
        local_terms = n_g * n_l
        if n_l:
            l_flat = loc.reshape(n_l * b, *loc.shape[2:])
            s_local = jax.nn.log_softmax(
                apply(l_flat)["cls_logits"].astype(jnp.float32).reshape(n_l, b, -1)
                / self.student_temp, -1)
            dino_local = -jnp.einsum("sbk,tbk->", s_local, t_cls) / (b * local_terms)
        else:
            dino_local = jnp.zeros(())
        total_terms = global_terms + local_terms
        dino = (global_terms * dino_global + local_terms * dino_local) / max(total_terms, 1)
        metrics.update(dino_global=dino_global, dino_local=dino_local)
        loss = self.dino_weight * dino

        # iBOT on the masked patches of the global crops.
        t_patch = self.teacher_probs(teacher["patch_logits"], temp, state["ibot_center"], valid)
        s_patch = jax.nn.log_softmax(student["patch_logits"].astype(jnp.float32)
                                     / self.student_temp, -1)
        ibot = -jnp.sum(weight * jnp.sum(t_patch * s_patch, -1)) / (n_g * b)
        metrics["ibot"] = ibot
        loss = loss + self.ibot_weight * ibot

        # KoLeo on the student's CLS of each global crop, per group of samples.
        if self.koleo_weight:
            group = self.koleo_group or max(b // self.batch_shards, 1)
            if b % group or group < 2:
                raise ValueError(f"objective.koleo_group={group}: must divide the batch {b} "
                                 "and be at least 2")
            cls = student["cls"].reshape(n_g, b // group, group, -1)
            koleo = jax.vmap(jax.vmap(koleo_loss))(cls).mean(1)  # (n_g,)
            metrics["koleo"] = koleo.mean()
            loss = loss + self.koleo_weight * koleo.sum()

        # Gram anchoring against the frozen Gram teacher.
        if self.gram_weight:
            gram_t = jax.lax.stop_gradient(
                apply(g_flat, {"params": state["gram"]}, train=False)["patches"])
            gram = self.gram(student["patches"], gram_t, b)
            metrics["gram"] = gram
            loss = loss + self.gram_weight * jnp.where(step >= self.gram_start, gram, 0.0)

        metrics.update(loss=loss, teacher_temp=temp, momentum=self.momentum_at(step))
        n_valid = jnp.maximum(valid.sum(), 1)
        aux = {"center": teacher["cls_logits"].astype(jnp.float32).mean(0),
               "ibot_center": jnp.sum(teacher["patch_logits"].astype(jnp.float32)
                                      * valid[:, None], 0) / n_valid}
        return loss, metrics, aux

    def gram(self, student_patches, teacher_patches, b: int):
        """DINOv3 ``GramLoss(apply_norm=True, remove_neg=False)`` of (n_g * B, N, D)."""
        if self.gram_img_level:
            return gram_loss(student_patches, teacher_patches)
        shards = self.batch_shards if b % self.batch_shards == 0 else 1
        regroup = lambda x: x.reshape(-1, shards, b // shards, *x.shape[1:]).swapaxes(0, 1).reshape(  # noqa: E731
            shards, -1, x.shape[-1])
        return gram_loss(regroup(student_patches), regroup(teacher_patches))


# ----------------------------------------------------------------------------------------
# Loss pieces, shared with the tests.


def sinkhorn_knopp(logits, temp, iterations: int = 3, valid=None):
    """DINOv2 / DINOv3 ``sinkhorn_knopp_teacher`` of (M, K) logits -> (M, K) assignments whose
    rows sum to 1; sums over all rows (``valid`` rows only; padding rows come out 0).

    The original's steps in the log domain: ``Q = exp(logits / temp)``, normalised to sum 1,
    then ``iterations`` times each prototype's column divided by its sum over the samples
    and by K, each sample's row by its sum over the prototypes and by the sample count;
    finally times the sample count. Each division is a subtraction of a ``logsumexp``, so
    no prototype underflows: the original computes ``exp`` of the raw logits in float32
    and loses every prototype whose logits all lie below about ``-87 * temp``, and a
    shift by one global maximum loses those more than that far below the maximum; here a
    prototype gets its share whatever its offset. Equal to the original wherever its
    ``exp`` neither underflows nor overflows."""
    logits = logits.astype(jnp.float32) / temp
    m, k = logits.shape
    if valid is None:
        valid = jnp.ones((m,), bool)
    count = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    log_q = jnp.where(valid[:, None], logits, -jnp.inf)
    log_q = log_q - jax.nn.logsumexp(log_q)
    for _ in range(iterations):
        cols = jax.nn.logsumexp(log_q, axis=0, keepdims=True)  # each prototype, over samples
        log_q = log_q - cols - math.log(k)
        rows = jax.nn.logsumexp(log_q, axis=1, keepdims=True)  # each sample, over prototypes
        log_q = log_q - jnp.where(valid[:, None], rows, 0.0) - jnp.log(count)
    return jnp.where(valid[:, None], jnp.exp(log_q) * count, 0.0)


def koleo_loss(x, eps: float = 1e-8):
    """DINOv2 ``KoLeoLoss`` of (B, D): ``-mean log(|x_i - x_nn(i) + eps| + eps)`` on the
    normalised rows, the nearest neighbour by inner product."""
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = x @ x.T
    n = x.shape[0]
    dots = jnp.where(jnp.eye(n, dtype=bool), -1.0, dots)
    nn_idx = jnp.argmax(dots, axis=1)
    d = jnp.linalg.norm(x - x[nn_idx] + eps, axis=-1)
    return -jnp.log(d + eps).mean()


def gram_loss(student, teacher):
    """MSE between the Gram matrices of the L2-normalised rows of (..., N, D) features."""
    def gram_of(x):
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return x @ jnp.swapaxes(x, -1, -2)
    return jnp.mean((gram_of(student) - gram_of(teacher)) ** 2)


def _prototypes(params, head: str) -> int:
    leaf = jax.tree_util.tree_leaves(params[head]["last_layer"]["kernel"])[0]
    return int(leaf.shape[-1])


def _ibot_head(params) -> str:
    return "ibot_head" if "ibot_head" in params else "dino_head"


def _patch_count(apply, example) -> int:
    """Patch tokens of a crop (traced for shapes only)."""
    out = jax.eval_shape(lambda x: apply(x, train=False)["patches"], example)
    return int(out.shape[1])
