"""Synthetic cohorts: skull-stripped T1w scans whose anatomy follows age, sex, diagnosis and
site, written as an ADNI / PPMI / UK Biobank style tree with its label table.

Subjects
--------
Each subject has an age (uniform in ``ages``), a sex (half each), a group (``groups``: name ->
share, exact counts by largest remainder) and a site (``sites`` of them, equal shares); the
three are drawn independently. ``followup`` of the subjects get a second session
``U(1, 2)`` years later (age increased, atrophy progressed; an MCI subject converts to AD
with probability 0.25). Group names are read through :mod:`jaxbrain.data.tables`'
vocabulary (CN, MCI, AD, PD; "HC", "Control", "Dementia" ... as synonyms) and written as
given.

Anatomy (the MNI templates of :mod:`jaxbrain.data.synthetic`, or its procedural head) with
:class:`~jaxbrain.data.synthetic.Atrophy`, from a *brain age* ``b = age + N(0, 1.5) + the
group's years`` (CN 0, MCI 4, AD 10, PD 2; AD adds 1.5 and MCI 0.75 per year of follow-up)
and ``u = (b - 20) / 70`` (clipped at 0):

  * ventricles grow by ``5.0 mm * u^2 * s_v`` (``s_v`` lognormal, sd 0.1, per subject);
  * grey matter within ``0.8 mm * u^1.5`` of CSF becomes CSF (cortical thinning);
  * hippocampi: grey matter within ``1.0 mm * u^2`` plus the group's distance (MCI 1.1 mm,
    AD 2.2 mm; + 0.08 and 0.15 mm per year of follow-up) of its edge becomes CSF;
  * PD: the midbrain's grey matter loses 0.8 mm at its edge and the substantia nigra is 10%
    darker.

Males' heads are 2% larger and females' 2% smaller (on top of each subject's random pose
and scale). The same subject keeps its pose and anatomy across sessions.

Sites (drawn from the seed): T1 gain (lognormal, sd 0.2), CSF and grey-matter contrast
(x U(0.75, 1.35) and x U(0.92, 1.08)), resolution (Gaussian blur, sigma U(0.8, 2.0) mm),
bias field strength (sd U(0.05, 0.25)) and Rician noise (sigma U(1.5, 5)% of white matter).
Each scan draws its own noise and bias field.

Layout (``root``)
-----------------
``sub-XXXX/ses-YY/anat/sub-XXXX_ses-YY_T1w.nii.gz`` (int16, RAS voxel order, skull-stripped,
background exactly 0) and ``labels.csv`` with columns ``subject, session, t1, diagnosis, age,
sex, site`` (paths relative to ``root``), which :func:`jaxbrain.data.tables.read_table` reads.
The tree is also a BIDS dataset (:mod:`jaxbrain.data.bids`): ``dataset_description.json``,
``participants.tsv`` (``participant_id, age, sex, diagnosis, site`` at baseline) and each
subject's ``sub-XXXX_sessions.tsv`` (``session_id, age, diagnosis`` per session); read through
``participants.tsv`` it gives the same scans and labels as ``labels.csv``.
The default shape (91, 109, 91) is FSL's MNI152 2 mm grid (voxel (0, 0, 0) at (-90, -126,
-72) mm); other shapes cover the same 182 x 218 x 182 mm. The same arguments give the same
files whatever the number of workers.

Speed: the MNI anatomy reads the deformed templates at the nearest 1 mm template voxel (2 mm
for grids of 3 mm or coarser) and interpolates only the distances atrophy thresholds; the
template maps are built once (seconds) and handed to the worker processes.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import multiprocessing as mp
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

from jaxbrain.data import synthetic as S
from jaxbrain.data import tables

MNI_2MM_SHAPE = (91, 109, 91)
MNI_FOV_MM = (182.0, 218.0, 182.0)
MNI_2MM_CENTER_MM = (0.0, -18.0, 18.0)
TABLE = "labels.csv"
ADNI_GROUPS = {"CN": 0.4, "MCI": 0.35, "AD": 0.25}
PPMI_GROUPS = {"HC": 0.35, "PD": 0.65}


@dataclasses.dataclass(frozen=True)
class _Effect:
    """What a diagnosis adds: brain-age years (and per follow-up year), hippocampal loss (mm,
    and per follow-up year), midbrain loss (mm), substantia nigra darkening (fraction)."""

    years: float = 0.0
    years_per_year: float = 0.0
    hippocampus: float = 0.0
    hippocampus_per_year: float = 0.0
    midbrain: float = 0.0
    nigra: float = 0.0


_EFFECTS = {
    "CN": _Effect(),
    "MCI": _Effect(years=4.0, years_per_year=0.75, hippocampus=1.1, hippocampus_per_year=0.08),
    "AD": _Effect(years=10.0, years_per_year=1.5, hippocampus=2.2, hippocampus_per_year=0.15),
    "PD": _Effect(years=2.0, midbrain=0.8, nigra=0.10),
}
_VENTRICLE_MM, _CORTEX_MM, _HIPPOCAMPUS_AGE_MM = 5.0, 0.8, 1.0
_HIPPOCAMPI = tuple(((side * x, y, z), radii) for side in (1.0, -1.0)
                    for (x, y, z), radii in (((24.0, -12.0, -18.0), (7.0, 8.0, 6.0)),
                                             ((29.0, -28.0, -8.0), (6.0, 10.0, 6.0))))
_MIDBRAIN = ((0.0, -20.0, -12.0), (12.0, 9.0, 7.0))
_NIGRA = tuple(((side * 11.0, -18.0, -11.0), (4.0, 7.0, 3.0)) for side in (1.0, -1.0))
_SEX_SCALE = {"M": 1.02, "F": 0.98}


@dataclasses.dataclass(frozen=True)
class Site:
    """A scanner: T1 gain, CSF and grey-matter contrast factors, blur (mm), bias field sd and
    noise (fraction of the white-matter intensity)."""

    name: str
    gain: float
    csf: float
    grey: float
    blur_mm: float
    bias: float
    noise: float


def draw_sites(n: int, seed: int) -> list[Site]:
    rng = np.random.default_rng([seed, 1])
    return [Site(f"site{k + 1}", math.exp(rng.normal(0.0, 0.2)), rng.uniform(0.75, 1.35),
                 rng.uniform(0.92, 1.08), rng.uniform(0.8, 2.0), rng.uniform(0.05, 0.25),
                 rng.uniform(0.015, 0.05)) for k in range(n)]


@dataclasses.dataclass(frozen=True)
class Scan:
    """One scan to render: who, when, where, and the anatomy it shows."""

    subject: str
    session: str
    age: float
    sex: str
    diagnosis: str
    site: Site
    anatomy_seed: tuple
    noise_seed: tuple
    atrophy: S.Atrophy
    head_scale: float
    nigra: float

    @property
    def path(self) -> str:
        return f"{self.subject}/{self.session}/anat/{self.subject}_{self.session}_T1w.nii.gz"


def _counts(n: int, shares: Sequence[float]) -> list[int]:
    """Largest-remainder counts of ``n`` in proportion to ``shares``."""
    quota = np.asarray(shares, np.float64) / np.sum(shares) * n
    counts = np.floor(quota).astype(int)
    for k in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def _canonical_groups(groups: Mapping[str, float]) -> dict[str, str]:
    vocab = tables.vocabulary()
    out = {}
    for name, share in groups.items():
        canonical = vocab.get(tables.normalise(name))
        if canonical not in _EFFECTS:
            raise ValueError(f"group {name!r}: expected one of CN, MCI, AD, PD (or a synonym: "
                             "HC, Control, Dementia, ...)")
        if not share > 0:
            raise ValueError(f"group {name!r}: share must be positive, got {share!r}")
        out[name] = canonical
    return out


def _atrophy(brain_age: float, hippocampus: float, midbrain: float, ventricle_scale: float
             ) -> S.Atrophy:
    u = max(0.0, (brain_age - 20.0) / 70.0)
    hippo = _HIPPOCAMPUS_AGE_MM * u**2 + hippocampus
    focal = tuple((c, r, hippo) for c, r in _HIPPOCAMPI)
    if midbrain > 0:
        focal += ((*_MIDBRAIN, midbrain),)
    return S.Atrophy(ventricles=_VENTRICLE_MM * u**2 * ventricle_scale,
                     cortex=_CORTEX_MM * u**1.5, focal=focal)


def plan(n: int, *, seed: int = 0, sites: int = 4, groups: Mapping[str, float] | None = None,
         ages: tuple[float, float] | None = None, pd: bool = False, followup: float = 0.3
         ) -> list[Scan]:
    """The scans of a cohort of ``n`` subjects (nothing rendered), in subject order."""
    if n < 1 or sites < 1:
        raise ValueError(f"need n >= 1 subjects and sites >= 1, got n={n}, sites={sites}")
    groups = dict(groups or (PPMI_GROUPS if pd else ADNI_GROUPS))
    lo, hi = ages or ((45.0, 80.0) if pd else (55.0, 90.0))
    canonical = _canonical_groups(groups)
    rng = np.random.default_rng([seed, 0])
    group_of = np.repeat(list(groups), _counts(n, list(groups.values())))[rng.permutation(n)]
    sex_of = np.repeat(["F", "M"], _counts(n, [1, 1]))[rng.permutation(n)]
    site_list = draw_sites(sites, seed)
    site_of = [site_list[k % sites] for k in rng.permutation(n)]
    scans = []
    for i in range(n):
        subject_rng = np.random.default_rng([seed, 2, i])
        age = float(subject_rng.uniform(lo, hi))
        offset = float(subject_rng.normal(0.0, 1.5))
        ventricle_scale = math.exp(subject_rng.normal(0.0, 0.1))
        group = str(group_of[i])
        sessions = [(0.0, group, canonical[group])]
        if subject_rng.random() < followup:
            later = sessions[0]
            if later[2] == "MCI" and subject_rng.random() < 0.25:  # converts to AD
                later = (0.0, next((g for g, c in canonical.items() if c == "AD"), "AD"), "AD")
            sessions.append((float(subject_rng.uniform(1.0, 2.0)), *later[1:]))
        for k, (years, group, diagnosis) in enumerate(sessions):
            effect = _EFFECTS[diagnosis]
            brain_age = age + years + offset + effect.years + effect.years_per_year * years
            hippo = effect.hippocampus + effect.hippocampus_per_year * years
            scans.append(Scan(
                subject=f"sub-{i + 1:04d}", session=f"ses-{k + 1:02d}", age=round(age + years, 1),
                sex=str(sex_of[i]), diagnosis=group, site=site_of[i],
                anatomy_seed=(seed, 2, i), noise_seed=(seed, 3, i, k),
                atrophy=_atrophy(brain_age, hippo, effect.midbrain, ventricle_scale),
                head_scale=_SEX_SCALE[str(sex_of[i])], nigra=effect.nigra))
    return scans


@dataclasses.dataclass(frozen=True)
class _MniMaps:
    """The MNI templates as scans sample them, on a 1 or 2 mm grid: tissue (0 outside the
    brain, CSF, GM, WM: the argmax of the template's maps) and the distance (mm) outside the
    smoothed brain envelope (both read at the nearest template voxel), and the distances that
    atrophy thresholds (:class:`~jaxbrain.data.synthetic.Atrophy`; read trilinearly): to the
    edges of the lateral ventricles and of CSF-or-outside, and from inside the grey matter to
    its edge."""

    tissue: np.ndarray
    envelope: np.ndarray
    ventricles: np.ndarray
    csf: np.ndarray
    grey_depth: np.ndarray
    origin: np.ndarray
    step: float


# Box (MNI mm, lower and upper corners) that the lateral ventricles fill most of.
_VENTRICLE_BOX = ((-25.0, -40.0, 5.0), (25.0, 25.0, 30.0))
_VENTRICLE_DEPTH_MM = 8.0  # below the brain surface: the cisterns and sulci lie shallower


_MAPS: dict[int, _MniMaps] = {}  # by template step; write_cohort hands its workers the maps


def _mni_maps(step: int) -> _MniMaps:
    if step not in _MAPS:
        _MAPS[step] = _build_mni_maps(step)
    return _MAPS[step]


def _install_maps(maps: dict) -> None:
    _MAPS.update(maps)


def _build_mni_maps(step: int) -> _MniMaps:
    """Computed in the brain's bounding box (beyond it: no tissue, edges 1000 mm away). The
    lateral ventricles are the connected CSF region deeper than 8 mm with the most voxels
    in :data:`_VENTRICLE_BOX`."""
    t = S._mni_template(step)
    brain = t.brain >= 0.5
    box = tuple(slice(max(int(i.min()) - 4, 0), int(i.max()) + 5) for i in np.nonzero(brain))
    brain = brain[box]
    grey, white = t.grey[box], t.white[box]
    tissue = np.where(brain, S._tissue_argmax(t.brain[box] - grey - white, grey, white), 0)
    tissue = tissue.astype(np.uint8)
    depth = ndi.distance_transform_edt(ndi.binary_fill_holes(brain)) * t.step
    regions, _ = ndi.label((tissue == S.CSF) & (depth > _VENTRICLE_DEPTH_MM))
    corner = t.origin + t.step * np.array([b.start for b in box])
    lo, hi = (np.round((np.asarray(c) - corner) / t.step).astype(int) for c in _VENTRICLE_BOX)
    counts = np.bincount(regions[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].ravel(),
                         minlength=regions.max() + 1)
    counts[0] = 0
    ventricles = regions == int(np.argmax(counts))

    def full(part, fill):
        out = np.full(t.brain.shape, fill, part.dtype)
        out[box] = part
        return out

    def to_edge(outside):  # distance (mm) to the edge of the region ~outside, 0 inside it
        edt = ndi.distance_transform_edt(outside) * t.step - 0.5 * t.step
        return full(np.maximum(edt, 0.0).astype(np.float32), 1000.0)

    return _MniMaps(full(tissue, 0), t.distance.astype(np.float16), to_edge(~ventricles),
                    to_edge(brain & (tissue != S.CSF)), to_edge(tissue == S.GREY_MATTER),
                    t.origin.astype(np.float32), float(t.step))


def _mni_classes(coords: np.ndarray, shell: np.ndarray, spacing: float,
                 atrophy: S.Atrophy) -> np.ndarray:
    """Rendering classes of the deformed MNI anatomy with ``atrophy`` (1 mm templates below
    3 mm voxels, else 2 mm)."""
    maps = _mni_maps(_template_step(spacing))
    shape = maps.tissue.shape
    index = coords.reshape(3, -1) - maps.origin[:, None]
    index *= np.float32(1.0 / maps.step)
    flat = np.zeros(index.shape[1], np.intp)
    for k in range(3):
        flat *= shape[k]
        flat += np.clip(np.rint(index[k]), 0, shape[k] - 1).astype(np.intp)
    classes = S._shell_classes(maps.envelope.ravel()[flat].astype(np.float32), shell)
    tissue = maps.tissue.ravel()[flat]
    brain = np.flatnonzero(tissue)
    t, points = tissue[brain], index[:, brain]
    sample = functools.partial(ndi.map_coordinates, order=1, mode="nearest", prefilter=False,
                               output=np.float32)
    if atrophy.ventricles > 0:
        t[sample(maps.ventricles, points) < atrophy.ventricles] = S.CSF
    if atrophy.cortex > 0:
        grey = np.flatnonzero(t == S.GREY_MATTER)
        t[grey[sample(maps.csf, points[:, grey]) < atrophy.cortex]] = S.CSF
    if atrophy.focal:
        grey = np.flatnonzero(t == S.GREY_MATTER)
        depth = sample(maps.grey_depth, points[:, grey])
        mm = points[:, grey] * np.float32(maps.step) + maps.origin[:, None]
        for centre, radii, distance in atrophy.focal:
            t[grey[S._inside_ellipsoid(mm, centre, radii) & (depth < distance)]] = S.CSF
    classes = classes.ravel()
    classes[brain] = t
    return classes.reshape(coords.shape[1:])


def _template_step(spacing: float) -> int:
    return 1 if spacing < 3.0 else 2


def grid(shape: Sequence[int] = MNI_2MM_SHAPE) -> np.ndarray:
    """RAS affine of the cohort grid: FSL's MNI152 2 mm grid at the default shape."""
    return S.grid_affine(shape, MNI_FOV_MM, MNI_2MM_CENTER_MM)


def render(scan: Scan, shape: Sequence[int] = MNI_2MM_SHAPE, anatomy: str = "auto"
           ) -> tuple[np.ndarray, np.ndarray]:
    """(T1 float32, tissue classes uint8) of ``scan`` on :func:`grid` ``(shape)``."""
    affine = grid(shape)
    anatomy = S._resolve_anatomy(anatomy)
    spacing = np.diag(affine)[:3]
    axes = tuple((affine[k, 3] + spacing[k] * np.arange(n)).astype(np.float32)
                 for k, n in enumerate(shape))
    rng_pose, rng_anatomy = np.random.default_rng(list(scan.anatomy_seed)).spawn(2)
    coords, _ = S._source_coordinates(rng_pose, axes)
    pivot = np.asarray(S.BRAIN_CENTER_MM, np.float32).reshape(3, 1, 1, 1)
    coords -= pivot
    coords *= np.float32(1.0 / scan.head_scale)
    coords += pivot
    nigra = None
    if scan.nigra > 0:
        nigra = np.zeros(coords.shape[1:], bool)
        for centre, radii in _NIGRA:
            nigra |= S._inside_ellipsoid(coords, centre, radii)
    shell = S._draw_shell(rng_anatomy)
    if anatomy == "mni":
        classes = _mni_classes(coords, shell, float(min(spacing)), scan.atrophy)
    else:
        classes = S._procedural_classes(rng_anatomy, coords, shell, scan.atrophy)
    del coords
    classes[classes >= S._BONE] = S.BACKGROUND
    image = _render_t1(np.random.default_rng(list(scan.noise_seed)), classes, axes, spacing,
                       scan, nigra)
    return image, S._TISSUE_OF_CLASS[classes]


def _render_t1(rng, classes, axes, spacing, scan: Scan, nigra) -> np.ndarray:
    """Class intensities with the site's contrast, the nigra darkened, the site's blur, a
    bias field and Rician noise; zero outside the brain."""
    site = scan.site
    table = np.asarray(S._INTENSITY["t1"], np.float64) * site.gain * math.exp(rng.normal(0.0, 0.05))
    table *= np.exp(rng.normal(0.0, 0.02, size=table.size))
    table[S.CSF] *= site.csf
    table[S.GREY_MATTER] *= site.grey
    table = table.astype(np.float32)
    image = table[classes]
    if nigra is not None:
        image[nigra & (classes != S.BACKGROUND)] *= np.float32(1.0 - scan.nigra)
    image = ndi.gaussian_filter(image, np.maximum(site.blur_mm / spacing, 0.3), truncate=3.0)
    image *= np.exp(S._sum_planes(*S._planes(rng, axes, step_mm=60.0, sd=site.bias)))
    sigma = np.float32(table[S.WHITE_MATTER] * site.noise)
    return S._rician(rng, image, sigma, classes != S.BACKGROUND)


def _write(job) -> dict:
    root, scan, shape, anatomy = job
    image, _ = render(scan, shape, anatomy)
    path = Path(root) / scan.path
    S._save(path, S._int16(image), grid(shape), "mni")
    return {"subject": scan.subject, "session": scan.session, "t1": scan.path,
            "diagnosis": scan.diagnosis, "age": f"{scan.age:.1f}", "sex": scan.sex,
            "site": scan.site.name}


def _rendered(jobs, workers: int, anatomy: str, shape):
    """The table rows of ``jobs`` as they are written, in order."""
    if workers == 0:
        yield from map(_write, jobs)
        return
    maps = {}
    if S._resolve_anatomy(anatomy) == "mni":  # built once here, not in every worker
        step = _template_step(float(min(np.diag(grid(shape))[:3])))
        maps[step] = _mni_maps(step)
    with mp.get_context("spawn").Pool(workers, _install_maps, (maps,)) as pool:
        yield from pool.imap(_write, jobs, chunksize=2)


def write_cohort(root, n: int, *, shape: Sequence[int] = MNI_2MM_SHAPE, seed: int = 0,
                 anatomy: str = "auto", sites: int = 4, groups: Mapping[str, float] | None = None,
                 ages: tuple[float, float] | None = None, pd: bool = False,
                 followup: float = 0.3, workers: int | None = None, progress: bool = True
                 ) -> list[dict]:
    """Writes a cohort of ``n`` subjects (see the module docstring) under ``root``.

    Args:
      groups: ``{name: share}``; default ADNI-like ``{"CN": .4, "MCI": .35, "AD": .25}``, or
        with ``pd`` PPMI-like ``{"HC": .35, "PD": .65}``. UK Biobank-like: ``{"CN": 1}``
        with ``ages=(40, 80)`` or ``(20, 80)``.
      ages: uniform age range at baseline; default (55, 90), with ``pd`` (45, 80).
      followup: share of subjects with a second session.
      workers: processes rendering in parallel (default: up to 8, one per CPU, when there are
        at least 16 scans); 0 renders in this process.
      progress: a tqdm bar with the rate and ETA.
    Returns the table rows (paths relative to ``root``), also written to ``root/labels.csv``.
    """
    shape = tuple(int(s) for s in shape)
    scans = plan(n, seed=seed, sites=sites, groups=groups, ages=ages, pd=pd, followup=followup)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(scans) >= 16 else 0
    jobs = [(str(root), scan, shape, anatomy) for scan in scans]
    rows = []
    with tqdm(total=len(jobs), unit="scan", desc="cohort", disable=not progress) as bar:
        for row in _rendered(jobs, workers, anatomy, shape):
            rows.append(row)
            bar.update()
    tmp = root / f"{TABLE}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, root / TABLE)
    _write_bids(root, rows)
    return rows


def _write_bids(root: Path, rows: list[dict]) -> None:
    """The BIDS side files of the cohort's tree: description, participants (baseline values)
    and per-subject sessions (age and diagnosis at each session)."""
    with open(root / "dataset_description.json", "w") as f:
        f.write('{"Name": "jaxbrain synthetic cohort", "BIDSVersion": "1.9.0", '
                '"DatasetType": "raw"}\n')
    subjects = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    lines = ["participant_id\tage\tsex\tdiagnosis\tsite"]
    for subject, sessions in subjects.items():
        first = sessions[0]
        lines.append(f"{subject}\t{first['age']}\t{first['sex']}\t{first['diagnosis']}\t"
                     f"{first['site']}")
        table = ["session_id\tage\tdiagnosis"]
        table += [f"{r['session']}\t{r['age']}\t{r['diagnosis']}" for r in sessions]
        (root / subject / f"{subject}_sessions.tsv").write_text("\n".join(table) + "\n")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
