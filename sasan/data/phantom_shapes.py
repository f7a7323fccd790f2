"""Anatomy of the cardiac phantom: one subject's tissue map and label map on a voxel grid.

World coordinates are RAS+ millimetres: +x towards the subject's right, +y anterior,
+z superior. The thorax axis is x = y = 0; the LV cavity centre is the heart's origin.
Every shape is an analytic solid (truncated ellipsoid, ellipse cylinder, tube along a
polyline) evaluated at smoothly deformed grid coordinates, painted in a fixed order so
that the labelled structures (MYO, LA, LV, AA) always win where shapes overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue codes of the intermediate tissue map; appearance is assigned per modality later.
TISSUES: tuple[str, ...] = (
    "air", "lung", "fat", "muscle", "myocardium", "blood", "blood_right",
    "marrow", "cortical_bone", "liver", "csf", "disc",
)
T = {name: code for code, name in enumerate(TISSUES)}

# Label order of the released MM-WHS preprocessed data (METHOD.md section 5).
CARDIAC_LABELS: dict[str, int] = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}


@dataclass(frozen=True)
class Grid:
    """A RAS-aligned voxel grid: ``shape`` (nx, ny, nz) voxels of ``spacing`` mm; voxel
    (0, 0, 0) sits at world ``origin`` (mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm, float32) along each axis, shaped for broadcasting."""
        out = []
        for ax in range(3):
            v = (self.origin[ax] + self.spacing[ax] * np.arange(self.shape[ax])).astype(np.float32)
            shape = [1, 1, 1]
            shape[ax] = -1
            out.append(v.reshape(shape))
        return out[0], out[1], out[2]

    def box(self, center, radius: float, margin_mm: float = 0.0, half=None) -> tuple[slice, slice, slice] | None:
        """Index box covering a world sphere of ``radius`` mm (or a box of ``half`` widths per
        axis) plus ``margin_mm``; None when it misses the grid."""
        sl = []
        for ax in range(3):
            ext = (radius if half is None else float(half[ax])) + margin_mm
            lo = (center[ax] - ext - self.origin[ax]) / self.spacing[ax]
            hi = (center[ax] + ext - self.origin[ax]) / self.spacing[ax]
            lo_i, hi_i = max(int(np.floor(lo)), 0), min(int(np.ceil(hi)) + 1, self.shape[ax])
            if lo_i >= hi_i:
                return None
            sl.append(slice(lo_i, hi_i))
        return sl[0], sl[1], sl[2]


def rotation(angles_deg) -> np.ndarray:
    """Rotation matrix from x-y-z Euler angles (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, grid: Grid, wavelength_mm: float, terms: int = 8) -> np.ndarray:
    """Random smooth field (float32, grid shape), unit RMS, as a sum of separable cosines
    with wavelengths >= ``wavelength_mm``. Separable, so it costs one small matmul."""
    per_axis = []
    for ax in range(3):
        x = grid.origin[ax] + grid.spacing[ax] * np.arange(grid.shape[ax])
        freq = rng.uniform(0.0, 1.0 / wavelength_mm, size=terms)
        phase = rng.uniform(0.0, 2 * np.pi, size=terms)
        per_axis.append(np.cos(2 * np.pi * np.outer(x, freq) + phase).astype(np.float32))  # (n_ax, terms)
    amp = (rng.normal(size=terms) * np.sqrt(8.0 / terms)).astype(np.float32)  # cos^3 products: mean square 1/8
    cx, cy, cz = per_axis
    field = (cx[:, None, :] * cy[None, :, :] * amp).reshape(-1, terms) @ cz.T
    return field.reshape(grid.shape).astype(np.float32, copy=False)


class Canvas:
    """Tissue and label maps plus the (deformed) world coordinates they are painted at."""

    def __init__(self, grid: Grid, displacement: tuple[np.ndarray, np.ndarray, np.ndarray], max_disp_mm: float):
        x, y, z = grid.axes()
        self.grid = grid
        self.px = (x + displacement[0]).astype(np.float32, copy=False)
        self.py = (y + displacement[1]).astype(np.float32, copy=False)
        self.pz = (z + displacement[2]).astype(np.float32, copy=False)
        self.margin = max_disp_mm
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.label = np.zeros(grid.shape, np.uint8)

    def coords(self, sl):
        return self.px[sl], self.py[sl], self.pz[sl]

    def paint(self, sl, mask: np.ndarray, tissue: str, label: int = 0) -> None:
        self.tissue[sl][mask] = T[tissue]
        self.label[sl][mask] = label


def ellipsoid_q(canvas: Canvas, sl, center, axes: np.ndarray, semi) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius q (< 1 inside) of an ellipsoid with orthonormal ``axes`` (columns,
    world) and ``semi`` semi-axes (mm); also the coordinate along the first axis (mm)."""
    px, py, pz = canvas.coords(sl)
    center = np.asarray(center, np.float32)  # float64 scalars would promote whole arrays
    dx, dy, dz = px - center[0], py - center[1], pz - center[2]
    q = np.zeros(dx.shape, np.float32)
    first = None
    for i in range(3):
        a = axes[:, i]
        u = dx * np.float32(a[0]) + dy * np.float32(a[1]) + dz * np.float32(a[2])
        if i == 0:
            first = u
        q += (u / np.float32(semi[i])) ** 2
    return q, first


def tube_dist(canvas: Canvas, sl, points: np.ndarray, radius: float) -> np.ndarray:
    """Distance (mm) to a polyline through ``points`` (n, 3) inside box ``sl``; each segment
    is evaluated only in its own box (``radius`` around it), elsewhere the distance is inf."""
    points = np.asarray(points, np.float32)
    shape = tuple(s.stop - s.start for s in sl)
    best = np.full(shape, np.inf, np.float32)
    for a, b in zip(points[:-1], points[1:]):
        lo, hi = np.minimum(a, b) - radius, np.maximum(a, b) + radius
        seg = canvas.grid.box((lo + hi) / 2, 0.0, canvas.margin, half=(hi - lo) / 2)
        if seg is None:
            continue
        inter = tuple(slice(max(s.start, o.start), min(s.stop, o.stop)) for s, o in zip(seg, sl))
        if any(i.start >= i.stop for i in inter):
            continue
        px, py, pz = canvas.coords(inter)
        d = b - a
        t = ((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) / np.float32(d @ d)
        np.clip(t, 0.0, 1.0, out=t)
        dist2 = (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + (pz - a[2] - t * d[2]) ** 2
        local = tuple(slice(i.start - s.start, i.stop - s.start) for i, s in zip(inter, sl))
        np.minimum(best[local], np.sqrt(dist2), out=best[local])
    return best


def polyline_box(canvas: Canvas, points: np.ndarray, radius: float):
    lo, hi = points.min(0) - radius, points.max(0) + radius
    return canvas.grid.box((lo + hi) / 2, 0.0, canvas.margin, half=(hi - lo) / 2)


@dataclass(frozen=True)
class Subject:
    """Per-subject anatomy parameters (mm, degrees)."""

    body_semi: tuple[float, float]      # body ellipse, LR and AP semi-axes
    fat_mm: float                       # subcutaneous fat
    wall_mm: float                      # chest-wall muscle
    heart_center: tuple[float, float, float]
    heart_rot: np.ndarray               # 3x3 jitter of the heart's orientation
    lv_semi: tuple[float, float, float]  # cavity: long, short, short (mm)
    myo_mm: float
    la_semi: tuple[float, float, float]
    ra_semi: tuple[float, float, float]
    aa_radius: float
    pa_radius: float
    da_radius: float
    epi_fat_mm: float
    rib_period: float
    rib_phase: float
    dome_z: float                       # liver dome height relative to the heart centre


def sample_subject(rng: np.random.Generator) -> Subject:
    sb = rng.uniform(0.88, 1.12)        # body size
    sh = rng.uniform(0.85, 1.15)        # heart size

    def j(lo: float = 0.9, hi: float = 1.1) -> float:  # independent per-dimension jitter
        return rng.uniform(lo, hi)

    return Subject(
        body_semi=(140.0 * sb * j(), 100.0 * sb * j()),
        fat_mm=rng.uniform(5.0, 18.0),
        wall_mm=rng.uniform(8.0, 14.0),
        heart_center=(-18.0 * sb + rng.uniform(-6, 6), 18.0 * sb + rng.uniform(-6, 6), 0.0),
        heart_rot=rotation(rng.uniform(-12.0, 12.0, size=3)),
        lv_semi=(31.0 * sh * j(), 17.0 * sh * j(), 16.0 * sh * j()),
        myo_mm=rng.uniform(7.0, 11.0),
        la_semi=(21.0 * sh * j(), 14.0 * sh * j(), 16.0 * sh * j()),
        ra_semi=(17.0 * sh * j(), 16.0 * sh * j(), 20.0 * sh * j()),
        aa_radius=13.0 * sh * j(0.85, 1.15),
        pa_radius=11.0 * sh * j(0.85, 1.15),
        da_radius=10.5 * sb * j(0.85, 1.15),
        epi_fat_mm=rng.uniform(2.5, 7.0),
        rib_period=rng.uniform(24.0, 32.0) * sb,
        rib_phase=rng.uniform(0.0, 2 * np.pi),
        dome_z=rng.uniform(-48.0, -36.0) * sh,
    )


# Atrial wall thickness (mm): the LA and RA walls are 1.5-3 mm thick in adults. Without a wall
# the LA's blood would touch epicardial fat directly, which bSSFP renders about as bright.
ATRIAL_WALL_MM = 2.0


def _grown(semi, mm: float) -> tuple[float, ...]:
    return tuple(x + mm for x in semi)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def heart_frame(s: Subject) -> np.ndarray:
    """Columns: e_u (apex -> base), e_v (right-anterior), e_w; jittered by the subject's rotation."""
    e_u = _unit([0.6, -0.6, 0.5])  # the apex points left, anterior and inferior
    e_w = _unit(np.array([0.0, 0.0, 1.0]) - e_u[2] * e_u)
    e_v = np.cross(e_w, e_u)
    return s.heart_rot @ np.stack([e_u, e_v, e_w], axis=1)


def paint_subject(canvas: Canvas, s: Subject) -> None:
    """Paint body, thorax and heart of subject ``s`` onto ``canvas`` (fixed order)."""
    _paint_body(canvas, s)
    _paint_heart(canvas, s)


def _paint_body(c: Canvas, s: Subject) -> None:
    full = (slice(None),) * 3
    px, py, pz = c.coords(full)
    a_b, b_b = s.body_semi
    rho_body = (px / a_b) ** 2 + (py / b_b) ** 2
    inner = s.fat_mm
    rho_muscle = (px / (a_b - inner)) ** 2 + (py / (b_b - inner)) ** 2
    a_c, b_c = a_b - inner - s.wall_mm, b_b - inner - s.wall_mm
    rho_cav = np.sqrt((px / a_c) ** 2 + (py / b_c) ** 2)
    c.paint(full, rho_body < 1, "fat")
    c.paint(full, rho_muscle < 1, "muscle")
    cavity = rho_cav < 1
    c.paint(full, cavity, "fat")  # mediastinal fat; lungs and organs are carved out of it below
    hx, hy, _ = s.heart_center
    mediastinum = (np.abs(px - 0.6 * hx) < 24.0) & (py < hy + 10)
    lungs = cavity & ~mediastinum & (rho_cav < 0.97)
    c.paint(full, lungs, "lung")
    # Liver (right) and upper abdomen under a diaphragm dome that is highest on the right.
    dome = s.dome_z + 14.0 - ((px - 45.0) ** 2 + py**2) / 260.0
    c.paint(full, (rho_muscle < 1) & (rho_cav < 1.0) & (pz < dome), "liver")
    # Ribs: oblique bands in the chest wall, lower anteriorly; sternum in front.
    wall = (rho_cav >= 1.02) & (rho_cav < 1.0 + 0.7 * s.wall_mm / b_c)
    band = np.cos(2 * np.pi * (pz + 0.3 * py) / s.rib_period + s.rib_phase) > 0.55
    c.paint(full, wall & band & (np.abs(px) > 20.0), "cortical_bone")
    sternum = (np.abs(px) < 13.0) & (py > b_c) & (py < b_c + 0.8 * s.wall_mm)
    c.paint(full, sternum, "marrow")
    c.paint(full, sternum & (np.abs(px) > 10.5), "cortical_bone")
    # Spine: vertebral body with discs, canal, posterior arch; trachea above the carina.
    y_sp = -b_c + 20.0
    r_sp = np.sqrt(px**2 + (py - y_sp) ** 2)
    disc = np.cos(2 * np.pi * pz / 27.0) > 0.8
    c.paint(full, r_sp < 16.0, "cortical_bone")
    c.paint(full, (r_sp < 14.0) & ~disc, "marrow")
    c.paint(full, (r_sp < 16.0) & disc, "disc")
    r_canal = np.sqrt(px**2 + (py - (y_sp - 24.0)) ** 2)
    c.paint(full, (r_canal < 12.0) & (r_canal >= 7.5) & (py < y_sp - 16.0), "cortical_bone")
    c.paint(full, r_canal < 7.5, "csf")
    trachea = (np.sqrt(px**2 + (py - (y_sp + 38.0)) ** 2) < 8.0) & (pz > 60.0)
    c.paint(full, trachea, "air")
    # Descending aorta: left-anterior of the spine, along z (contrast blood, not labelled).
    r_da = np.sqrt((px + 22.0) ** 2 + (py - (y_sp + 22.0)) ** 2)
    c.paint(full, r_da < s.da_radius + 1.5, "muscle")  # the vessel wall
    c.paint(full, r_da < s.da_radius, "blood")


def _paint_heart(c: Canvas, s: Subject) -> None:
    ctr = np.asarray(s.heart_center, float)
    fr = heart_frame(s)
    e_u, e_v = fr[:, 0], fr[:, 1]
    a, b, b2 = s.lv_semi
    t = s.myo_mm
    u_base = 0.55 * a
    base = ctr + e_u * u_base
    rot = s.heart_rot

    def world(offset) -> np.ndarray:  # body-frame offset (mm) -> world offset, heart rotation applied
        return rot @ np.asarray(offset, float)


    la_c = base + e_u * 12.0 + world([-4.0, -14.0, 6.0])
    ra_c = la_c + world([32.0, 10.0, -8.0])
    rv_c = ctr + e_v * (b + t) * 0.95 + e_u * 0.12 * a
    rv_semi = (0.82 * a, 0.95 * b, 1.35 * b2)
    aa_root = base + world([9.0, 9.0, 2.0])
    aa = np.stack([aa_root - e_u * 8.0, aa_root + world([6.0, 6.0, 32.0]),
                   aa_root + world([6.0, 2.0, 62.0]), aa_root + world([-6.0, -22.0, 80.0])])
    pa_root = aa_root + world([-15.0, 15.0, 2.0])
    pa = np.stack([pa_root - e_u * 6.0, pa_root + world([-6.0, 2.0, 26.0]), pa_root + world([-16.0, -26.0, 36.0])])
    body_axes = rot  # atria are oriented along the (jittered) body axes

    # Epicardial/pericardial fat: every chamber and great vessel grown by epi_fat_mm.
    f = s.epi_fat_mm
    for center, axes, semi in (
        (ctr, fr, (a + t + f, b + t + f, b2 + t + f)), (rv_c, fr, tuple(x + 3 + f for x in rv_semi)),
        (la_c, body_axes, _grown(s.la_semi, ATRIAL_WALL_MM + f)), (ra_c, body_axes, _grown(s.ra_semi, ATRIAL_WALL_MM + f)),
    ):
        sl = c.grid.box(center, max(semi), c.margin)
        if sl is not None:
            q, u = ellipsoid_q(c, sl, center, axes, semi)
            keep = q < 1
            if center is ctr:
                keep &= u <= u_base + f
            c.paint(sl, keep, "fat")
    for pts, r in ((aa, s.aa_radius), (pa, s.pa_radius)):
        sl = polyline_box(c, pts, r + f)
        if sl is not None:
            c.paint(sl, tube_dist(c, sl, pts, r + f) < r + f, "fat")

    # Right heart (blood_right: less contrast enhancement on CT), thin RV wall.
    sl = c.grid.box(rv_c, max(rv_semi) + 3, c.margin)
    if sl is not None:
        q_wall, _ = ellipsoid_q(c, sl, rv_c, fr, tuple(x + 3.0 for x in rv_semi))
        q_rv, u_rv = ellipsoid_q(c, sl, rv_c, fr, rv_semi)
        c.paint(sl, q_wall < 1, "myocardium")
        c.paint(sl, q_rv < 1, "blood_right")
    sl = c.grid.box(ra_c, max(s.ra_semi) + ATRIAL_WALL_MM, c.margin)
    if sl is not None:
        c.paint(sl, ellipsoid_q(c, sl, ra_c, body_axes, _grown(s.ra_semi, ATRIAL_WALL_MM))[0] < 1, "myocardium")
        c.paint(sl, ellipsoid_q(c, sl, ra_c, body_axes, s.ra_semi)[0] < 1, "blood_right")
    sl = polyline_box(c, pa, s.pa_radius + 1.5)
    if sl is not None:
        d = tube_dist(c, sl, pa, s.pa_radius + 1.5)
        c.paint(sl, d < s.pa_radius + 1.5, "muscle")
        c.paint(sl, d < s.pa_radius, "blood_right")

    # Labelled structures last: LA, AA, then MYO and LV (the LV outflow owns the aortic root).
    # The LA label is the cavity (MM-WHS); its wall, like the RA's, is unlabelled myocardium
    # and forms the interatrial septum where the two atria meet.
    sl = c.grid.box(la_c, max(s.la_semi) + ATRIAL_WALL_MM, c.margin)
    if sl is not None:
        c.paint(sl, ellipsoid_q(c, sl, la_c, body_axes, _grown(s.la_semi, ATRIAL_WALL_MM))[0] < 1, "myocardium")
        c.paint(sl, ellipsoid_q(c, sl, la_c, body_axes, s.la_semi)[0] < 1, "blood", CARDIAC_LABELS["LA"])
    sl = polyline_box(c, aa, s.aa_radius + 1.5)
    if sl is not None:
        d = tube_dist(c, sl, aa, s.aa_radius + 1.5)
        c.paint(sl, (d < s.aa_radius + 1.5) & (d >= s.aa_radius), "muscle")
        c.paint(sl, d < s.aa_radius, "blood", CARDIAC_LABELS["AA"])
    sl = c.grid.box(ctr, a + t, c.margin)
    if sl is not None:
        q_out, u = ellipsoid_q(c, sl, ctr, fr, (a + t, b + t, b2 + t))
        q_in, _ = ellipsoid_q(c, sl, ctr, fr, (a, b, b2))
        below_base = u <= u_base
        c.paint(sl, (q_out < 1) & below_base, "myocardium", CARDIAC_LABELS["MYO"])
        c.paint(sl, (q_in < 1) & below_base, "blood", CARDIAC_LABELS["LV"])


def rasterise(subject: Subject, grid: Grid, rng: np.random.Generator, deform_mm: float = 3.0):
    """Tissue map and label map (uint8, grid shape) of ``subject`` under a smooth random
    deformation of about ``deform_mm`` RMS displacement."""
    disp = tuple(smooth_field(rng, grid, wavelength_mm=70.0) * np.float32(deform_mm) for _ in range(3))
    max_disp = float(max(np.abs(d).max() for d in disp))
    canvas = Canvas(grid, disp, max_disp)
    paint_subject(canvas, subject)
    return canvas.tissue, canvas.label
