"""Procedural "CAD" models for the 12 PASCAL3D+ categories.

PASCAL3D+ ships 4–10 coarse CAD models per category; these stand in for them. Every model
is assembled from parametric parts (boxes, cylinders, ellipsoids, tori, lofted hulls,
wings, extruded profiles) whose dimensions are drawn from a seeded RNG, and structural
variants (sedan / SUV / pickup, jet / propeller plane, sailboat / motorboat, ...) cycle with
the model index, so silhouettes differ clearly between categories and vary within one.

Units and frame (in memory; ``camera.py``'s convention, which is NeMo's after its CAD conversion):

* y is up, the object's **front points to +z** (azimuth 0 looks at the front, azimuth π/2
  at its left side, which faces +x), width runs along x;
* the bounding box is centred at the origin and its **longest side is 1** (unit-size).

Every part is a closed, consistently outward-oriented triangle mesh (each directed edge
appears once and its reverse once; the signed volume is positive). Parts may interpenetrate
— as in PASCAL3D+'s CAD files, the model is a union of closed shells, which is all that
rasterization and silhouettes need. Part materials (``MATERIALS``) are kept in memory for
shading; the ``.off`` files store geometry only, like PASCAL3D+'s, and in PASCAL3D+'s on-disk
frame (z up; ``write_cad_library``).

Every model has a defined azimuth: even the bottles, mostly surfaces of revolution, carry a
label on their front only (``label_patch``, its own material), as real bottles do.

The number of models per category equals PASCAL3D+'s (``NUM_CAD_MODELS``); ``cad_index`` is
1-based, as in PASCAL3D+ annotations, and model ``k`` is written as ``CAD/<category>/{k:02d}.off``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..mesh import UVMesh, write_off, y_up_to_z_up

__all__ = [
    "CATEGORIES", "NUM_CAD_MODELS", "MATERIALS", "CADModel", "cad_model", "cad_models",
    "write_cad_library", "signed_volume",
]

CATEGORIES = (
    "aeroplane", "bicycle", "boat", "bottle", "bus", "car",
    "chair", "diningtable", "motorbike", "sofa", "train", "tvmonitor",
)
# PASCAL3D+ (Xiang et al. 2014) has this many CAD models per category.
NUM_CAD_MODELS = {
    "aeroplane": 8, "bicycle": 6, "boat": 6, "bottle": 8, "bus": 6, "car": 10,
    "chair": 10, "diningtable": 6, "motorbike": 5, "sofa": 6, "train": 4, "tvmonitor": 4,
}
# Shading classes: the scene generator draws one colour (and surface pattern) per class.
MATERIALS = ("body", "secondary", "dark", "glass", "metal", "light")


@dataclass(frozen=True)
class CADModel:
    """One procedural CAD model.

    Attributes:
        category: one of ``CATEGORIES``.
        index: 1-based ``cad_index``.
        verts: ``(V, 3)`` float32, object frame (y up, front +z, longest bbox side 1, centred).
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside.
        face_material: ``(F,)`` int64 index into ``MATERIALS``.
        face_part: ``(F,)`` int64 index into ``part_names``.
        part_names: name of each part (``"wheel_fl"``, ``"wing"``, ...).
    """

    category: str
    index: int
    verts: torch.Tensor
    faces: torch.Tensor
    face_material: torch.Tensor
    face_part: torch.Tensor
    part_names: tuple[str, ...]

    def to_uvmesh(self) -> UVMesh:
        """The geometry as a ``UVMesh`` with a one-texel atlas (all UVs 0), for ``render.*``."""
        return UVMesh(self.verts, self.faces, torch.zeros(1, 2), torch.zeros_like(self.faces))

    def subset(self, parts) -> "CADModel":
        """A model with only the given part indices (unused vertices are kept; they are harmless)."""
        keep = torch.isin(self.face_part, torch.as_tensor(list(parts), dtype=torch.int64))
        return CADModel(self.category, self.index, self.verts, self.faces[keep], self.face_material[keep],
                        self.face_part[keep], self.part_names)


def signed_volume(verts, faces) -> float:
    """Signed volume of a closed triangle mesh: positive when the faces point outward."""
    v = np.asarray(verts, dtype=np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6)


# --------------------------------------------------------------------------- primitives
# Each primitive returns a part (verts (V, 3) float64, faces (F, 3), material, name); every
# one is built as a loft of vertex rings, which makes it closed by construction.


def _loft(rings, *, closed=False, start=None, end=None):
    """Join rings ``(R, K, 3)`` by quads; cap the ends with a fan to ``start``/``end`` (a point)
    or to the ring centroid (``None``); ``closed`` joins the last ring back to the first (torus)."""
    rings = np.asarray(rings, dtype=np.float64)
    r, k, _ = rings.shape
    idx = np.arange(r * k).reshape(r, k)
    verts, faces = [rings.reshape(-1, 3)], []
    for i in range(r if closed else r - 1):
        a, b = idx[i], idx[(i + 1) % r]
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        faces += [np.stack([a, a1, b1], 1), np.stack([a, b1, b], 1)]
    if not closed:
        n = r * k
        for ring, tip, first in ((0, start, True), (r - 1, end, False)):
            verts.append((rings[ring].mean(0) if tip is None else np.asarray(tip, dtype=np.float64))[None])
            a, a1, c = idx[ring], np.roll(idx[ring], -1), np.full(k, n)
            faces.append(np.stack([c, a1, a], 1) if first else np.stack([c, a, a1], 1))
            n += 1
    v, f = np.concatenate(verts), np.concatenate(faces)
    if signed_volume(v, f) < 0:  # the ring order decides the winding; fix it once here
        f = f[:, ::-1].copy()
    return v, f


def _part(vf, material, name):
    assert material in MATERIALS, material
    return vf[0], vf[1], material, name


def _frame(axis):
    d = np.asarray(axis, dtype=np.float64)
    d = d / np.linalg.norm(d)
    helper = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    return d, e1, np.cross(d, e1)


def _circle(center, axis, radius, n, phase=0.0):
    _, e1, e2 = _frame(axis)
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.asarray(center, float) + radius * (np.cos(a)[:, None] * e1 + np.sin(a)[:, None] * e2)


def box(center, size, material, name="box", yaw=0.0):
    """Axis-aligned box (rotated by ``yaw`` about y) of full ``size (3,)`` at ``center``."""
    sx, sy, sz = np.asarray(size, float) / 2
    ring = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])
    rings = np.stack([np.c_[ring, np.full(4, z)] for z in (-sz, sz)])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return _part(_loft(rings @ rot.T + np.asarray(center, float)), material, name)


def cylinder(p0, p1, radius, material, name="cylinder", n=12, radius1=None):
    """Capped cylinder (or truncated cone, ``radius1`` at ``p1``) from ``p0`` to ``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    r1 = radius if radius1 is None else radius1
    rings = np.stack([_circle(p0, p1 - p0, radius, n), _circle(p1, p1 - p0, r1, n)])
    return _part(_loft(rings), material, name)


def ellipsoid(center, radii, material, name="ellipsoid", n_lat=7, n_lon=12):
    """Ellipsoid with semi-axes ``radii (3,)``; poles on the y axis."""
    center, radii = np.asarray(center, float), np.asarray(radii, float)
    lat = np.pi * np.arange(1, n_lat) / n_lat
    lon = 2 * np.pi * np.arange(n_lon) / n_lon
    unit = np.stack([np.sin(lat)[:, None] * np.sin(lon), np.cos(lat)[:, None].repeat(n_lon, 1),
                     np.sin(lat)[:, None] * np.cos(lon)], -1)
    pole = np.array([0.0, 1.0, 0.0])
    vf = _loft(center + unit * radii, start=center + pole * radii, end=center - pole * radii)
    return _part(vf, material, name)


def torus(center, axis, major, minor, material, name="torus", n_major=20, n_minor=6):
    """Torus around ``axis`` (a ring, e.g. a bicycle tyre)."""
    d, e1, e2 = _frame(axis)
    rings = []
    for a in 2 * np.pi * np.arange(n_major) / n_major:
        radial = np.cos(a) * e1 + np.sin(a) * e2
        b = 2 * np.pi * np.arange(n_minor) / n_minor
        rings.append(np.asarray(center, float) + (major + minor * np.cos(b))[:, None] * radial + (minor * np.sin(b))[:, None] * d)
    return _part(_loft(np.stack(rings), closed=True), material, name)


def extrude_x(profile_zy, width, material, name="profile", bevel=0.0, x_center=0.0):
    """A side profile (polygon ``(K, 2)`` of ``(z, y)`` points, star-shaped about its centroid)
    extruded along x over ``width``; ``bevel`` shrinks the two end rings for rounded edges."""
    p = np.asarray(profile_zy, float)
    c = p.mean(0)
    e0, e1 = p - c, np.roll(p, -1, 0) - c
    cross = e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]
    if not ((cross > 0).all() or (cross < 0).all()):
        raise ValueError(f"profile of {name!r} must be star-shaped about its centroid (the caps are fans from it)")
    span = (p.max(0) - p.min(0)).max()
    xs, shrink = [-width / 2, width / 2], [0.0, 0.0]
    if bevel > 0:
        xs = [-width / 2, -width / 2 + bevel, width / 2 - bevel, width / 2]
        shrink = [bevel / span * 2, 0.0, 0.0, bevel / span * 2]
    rings = [np.c_[np.full(len(p), x + x_center), (c + (p - c) * (1 - s))[:, ::-1]] for x, s in zip(xs, shrink)]
    return _part(_loft(np.stack(rings)), material, name)


def loft_sections(zs, sections_xy, material, name="loft", start=None, end=None):
    """Loft along z through cross-sections ``sections_xy (R, K, 2)`` of ``(x, y)`` points."""
    rings = np.stack([np.c_[s, np.full(len(s), z)] for z, s in zip(zs, np.asarray(sections_xy, float))])
    return _part(_loft(rings, start=start, end=end), material, name)


def revolve(ys, radii, material, name="revolve", n=14):
    """Surface of revolution about the y axis through ``(radius, y)`` profile points."""
    rings = np.stack([_circle([0.0, y, 0.0], [0, 1, 0], r, n) for y, r in zip(ys, radii)])
    return _part(_loft(rings), material, name)


def label_patch(radius, y0, y1, width, material, name="label", n=9, thickness=0.09):
    """A curved slab on a vertical cylinder of ``radius``: angles ``±width/2`` (radians) about
    the front (+z, angle measured towards +x), heights ``y0..y1``, radii from
    ``(1 - thickness/2) radius`` (inside the bottle's 14-gon, whose flats lie at 0.975 radius)
    to ``(1 + thickness/2) radius``. A sweep of a rectangle, capped at both ends: closed."""
    r0, r1 = radius * (1 - thickness / 2), radius * (1 + thickness / 2)
    rect = np.array([[r0, y0], [r1, y0], [r1, y1], [r0, y1]])
    rings = [np.c_[rect[:, 0] * np.sin(a), rect[:, 1], rect[:, 0] * np.cos(a)]
             for a in np.linspace(-width / 2, width / 2, n)]
    return _part(_loft(np.stack(rings)), material, name)


def wing(root_z, span, chord_root, chord_tip, thickness, sweep, material, name="wing", y=0.0, dihedral=0.0, axis=0):
    """A symmetric tapered, swept wing through the centre: sections along x (``axis=0``,
    horizontal) or up y (``axis=1``, a fin; then ``span`` is its height from ``y``)."""
    def section(chord):
        t = thickness * chord / chord_root
        return np.array([[0.5, 0], [0.2, 0.5 * t / chord], [-0.3, 0.3 * t / chord], [-0.5, 0],
                         [-0.3, -0.3 * t / chord], [0.2, -0.5 * t / chord]]) * chord
    rings = []
    stations = (-1.0, 0.0, 1.0) if axis == 0 else (0.0, 1.0)
    for s in stations:
        chord = chord_root + (chord_tip - chord_root) * abs(s)
        sec = section(chord)  # (z, thickness) points
        z = root_z + sec[:, 0] - sweep * abs(s)
        if axis == 0:
            pts = np.c_[np.full(len(sec), s * span / 2), y + sec[:, 1] + dihedral * abs(s), z]
        else:
            pts = np.c_[sec[:, 1], np.full(len(sec), y + s * span), z]
        rings.append(pts)
    return _part(_loft(np.stack(rings)), material, name)


def _assemble(category, index, parts) -> CADModel:
    verts, faces, mats, part_ids, names, offset = [], [], [], [], [], 0
    for i, (v, f, mat, name) in enumerate(parts):
        verts.append(v)
        faces.append(f + offset)
        mats.append(np.full(len(f), MATERIALS.index(mat)))
        part_ids.append(np.full(len(f), i))
        names.append(name)
        offset += len(v)
    v = np.concatenate(verts)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) / (hi - lo).max()  # centred, longest side 1
    return CADModel(category, index, torch.tensor(v, dtype=torch.float32),
                    torch.tensor(np.concatenate(faces), dtype=torch.int64),
                    torch.tensor(np.concatenate(mats), dtype=torch.int64),
                    torch.tensor(np.concatenate(part_ids), dtype=torch.int64), tuple(names))


# --------------------------------------------------------------------------- categories
# Builders take (rng, variant) and return parts in a loose frame (y up, front +z); _assemble
# centres and scales. Sizes are in "metres of a typical instance" before normalisation.

def _ring2(rx, ry, n=10, y0=0.0, power=1.0):
    """(n, 2) points of an ellipse (``power`` < 1 squares it off), counter-clockwise in (x, y)."""
    a = 2 * np.pi * np.arange(n) / n + np.pi / n
    c, s = np.cos(a), np.sin(a)
    return np.c_[rx * np.sign(c) * np.abs(c) ** power, y0 + ry * np.sign(s) * np.abs(s) ** power]


def _tube(p0, p1, r, material="body", name="tube"):
    return cylinder(p0, p1, r, material, name, n=6)


def _wheel(x, y, z, r, w, name="wheel", n=14):
    """A tyre (dark cylinder along x) with a metal hub disc sticking out on both sides."""
    return [cylinder((x - w / 2, y, z), (x + w / 2, y, z), r, "dark", name, n=n),
            cylinder((x - w * 0.6, y, z), (x + w * 0.6, y, z), r * 0.55, "metal", name + "_hub", n=8)]


def _aeroplane(rng, v):
    u, kind = rng.uniform, v % 4  # twin-jet airliner, fighter, propeller high-wing, four-engine T-tail
    r = u(0.04, 0.05) if kind == 1 else u(0.045, 0.065)
    zs = np.linspace(-0.44, 0.44, 8)
    rad = np.interp(zs, [-0.44, -0.25, 0.3, 0.44], [0.3, 0.95, 1.0, 0.55]) * r
    lift = np.interp(zs, [-0.44, -0.25], [0.5 * r, 0.0])
    parts = [loft_sections(zs, [_ring2(q, q * 1.05, 10, dy) for q, dy in zip(rad, lift)], "body", "fuselage",
                           start=(0, 0.6 * r, -0.5), end=(0, -0.1 * r, 0.5))]
    fin_h, tail_y = u(0.14, 0.19), 0.4 * r
    if kind == 1:
        parts += [wing(-0.12, u(0.55, 0.7), u(0.4, 0.5), 0.04, 0.03, u(0.25, 0.32), "body", "wing"),
                  wing(-0.36, fin_h, 0.2, 0.06, 0.015, 0.12, "secondary", "fin", y=tail_y, axis=1),
                  ellipsoid((0, 0.8 * r, 0.22), (0.6 * r, 0.6 * r, 0.09), "glass", "canopy")]
        return parts
    high = kind == 2
    root_z = u(0.08, 0.14) if high else u(0.0, 0.08)
    span = u(0.9, 1.1) if high else u(0.85, 1.05)
    parts.append(wing(root_z, span, u(0.12, 0.15) if high else u(0.16, 0.22), u(0.09, 0.11) if high else u(0.05, 0.07),
                      0.025, 0.0 if high else u(0.12, 0.2), "body", "wing", y=r if high else -0.5 * r, dihedral=0.0 if high else 0.04))
    parts.append(wing(-0.39, fin_h, 0.14, 0.06, 0.015, 0.1, "secondary", "fin", y=tail_y, axis=1))
    stab_y = tail_y + fin_h * 0.95 if kind == 3 else 0.2 * r
    parts.append(wing(-0.4 - (0.08 if kind == 3 else 0.0), u(0.28, 0.36), 0.1, 0.05, 0.015, 0.06, "body", "stabiliser", y=stab_y))
    if high:
        parts += [box((0, 0, 0.5), (0.28, 0.03, 0.015), "dark", "propeller"), box((0, 0, 0.5), (0.03, 0.28, 0.015), "dark", "propeller2")]
        for s in (-1, 1):
            parts.append(_tube((s * 0.02, -0.5 * r, root_z), (s * 0.22, r, root_z), 0.006, "metal", "strut"))
            parts += _wheel(s * 0.07, -r - 0.05, root_z + 0.05, 0.03, 0.02, "gear")
    else:
        for x in (0.18,) if kind == 0 else (0.15, 0.3):
            for s in (-1, 1):
                z0 = root_z - 0.03 - 0.25 * x
                parts.append(cylinder((s * x * span, -1.4 * r, z0), (s * x * span, -1.4 * r, z0 + 0.13), 0.032, "secondary", "engine"))
    return parts


def _bicycle(rng, v):
    u, kind = rng.uniform, v % 3  # road (diamond frame), mountain (fat tyres, sloping tube), city (step-through)
    R, tyre = u(0.3, 0.35), (0.015, 0.028, 0.02)[kind]
    wb = u(0.95, 1.1)
    zr, zf = -wb / 2, wb / 2
    tr = u(0.013, 0.018)
    bb = np.array([0, R - 0.03, -0.05])
    seat = np.array([0, R + u(0.45, 0.55), -0.22])
    head_t, head_b = np.array([0, R + 0.5, zf - 0.2]), np.array([0, R + 0.32, zf - 0.14])
    parts = []
    for z, nm in ((zr, "wheel_rear"), (zf, "wheel_front")):
        parts += [torus((0, R, z), (1, 0, 0), R - tyre, tyre, "dark", nm),
                  cylinder((-0.04, R, z), (0.04, R, z), 0.025, "metal", nm + "_hub", n=8)]
    sp = seat - np.array([0, 0.06, -0.015])
    parts += [_tube(bb, seat, tr, name="seat_tube"), _tube(bb, head_b, tr * 1.2, name="down_tube"),
              _tube(head_b, head_t, tr * 1.2, name="head_tube")]
    if kind == 0:
        parts.append(_tube(sp, head_t, tr, name="top_tube"))
    elif kind == 1:
        parts.append(_tube(bb + 0.6 * (seat - bb), head_t, tr, name="top_tube"))
    else:
        parts.append(_tube(bb + np.array([0, 0.08, 0.06]), head_b + np.array([0, 0.05, -0.03]), tr, name="low_tube"))
    for s in (-1, 1):
        axle = np.array([s * 0.035, R, zr])
        parts += [_tube(bb, axle, tr * 0.7, name="chain_stay"), _tube(sp, axle, tr * 0.7, name="seat_stay"),
                  _tube(head_b, np.array([s * 0.035, R, zf]), tr * 0.8, name="fork")]
    bar = head_t + np.array([0, u(0.04, 0.1), -0.03])
    bw = (0.42, 0.62, 0.55)[kind]
    parts += [_tube(head_t, bar, tr, "metal", "stem"),
              cylinder((-bw / 2, bar[1], bar[2]), (bw / 2, bar[1], bar[2]), 0.012, "dark", "handlebar", n=6),
              ellipsoid(seat + np.array([0, 0.025, 0]), (0.06, 0.025, 0.12), "dark", "saddle", 5, 8),
              cylinder(bb - np.array([0.03, 0, 0]), bb + np.array([0.03, 0, 0]), 0.08, "metal", "chainring", n=12)]
    return parts


def _boat(rng, v):
    u, kind = rng.uniform, v % 3  # sailboat, motor yacht, fishing boat
    L, W, d = 1.0, u(0.28, 0.36), u(0.1, 0.14)
    zs = np.linspace(-L / 2, 0.46 * L, 9)
    hw = np.interp(zs, [-0.5, 0.0, 0.3, 0.46], [0.85, 1.0, 0.75, 0.12]) * W / 2
    dep = np.interp(zs, [-0.5, 0.0, 0.3, 0.46], [0.85, 1.0, 0.9, 0.45]) * d
    deck = np.interp(zs, [-0.5, 0.2, 0.46], [0.0, 0.0, u(0.04, 0.08)])
    a = np.linspace(0, np.pi, 7)
    secs = [np.c_[w * np.cos(a), y - dd * np.sin(a) ** 0.7] for w, dd, y in zip(hw, dep, deck)]
    parts = [loft_sections(zs, secs, "body", "hull", end=(0, deck[-1] + 0.01, 0.5))]
    if kind == 0:
        h, zm = u(0.75, 1.0), u(0.02, 0.12)
        parts += [cylinder((0, -0.02, zm), (0, h, zm), 0.008, "metal", "mast", n=6),
                  extrude_x([(zm - 0.012, 0.05), (zm - u(0.35, 0.42), 0.05), (zm - 0.012, h * 0.95)], 0.006, "light", "mainsail"),
                  extrude_x([(zm + 0.012, 0.04), (zm + 0.012, h * 0.85), (0.44, 0.05)], 0.006, "light", "jib")]
    elif kind == 1:
        cl, ch = u(0.35, 0.5), u(0.08, 0.12)
        parts += [box((0, ch / 2, -0.05), (W * 0.6, ch, cl), "secondary", "cabin"),
                  box((0, ch + 0.035, -0.08), (W * 0.5, 0.07, cl * 0.6), "secondary", "flybridge"),
                  box((0, ch * 0.6, -0.05 + cl / 2 + 0.002), (W * 0.55, ch * 0.5, 0.004), "glass", "windscreen")]
    else:
        hh = u(0.14, 0.2)
        parts += [box((0, hh / 2, -0.22), (W * 0.55, hh, 0.18), "secondary", "wheelhouse"),
                  box((0, hh * 0.75, -0.22 + 0.092), (W * 0.5, hh * 0.3, 0.004), "glass", "wheelhouse_window"),
                  cylinder((0, 0, 0.12), (0, u(0.3, 0.45), 0.12), 0.01, "metal", "mast", n=6),
                  _tube((0, 0.3, 0.12), (0, 0.03, 0.4), 0.005, "metal", "boom")]
    return parts


def _bottle(rng, v):
    u, kind = rng.uniform, v % 4  # wine, water, beer, jug
    R = u(0.13, 0.17) if kind != 3 else u(0.2, 0.26)
    if kind == 0:
        ys, rs = [0, 0.55, 0.68, 0.72, 0.95, 1.0], [R, R, 0.55 * R, 0.3 * R, 0.28 * R, 0.3 * R]
    elif kind == 1:
        ys, rs = [0, 0.25, 0.32, 0.4, 0.62, 0.74, 0.82, 0.85], [R, R, 0.85 * R, R, R, 0.5 * R, 0.3 * R, 0.3 * R]
    elif kind == 2:
        ys, rs = [0, 0.48, 0.6, 0.66, 0.82], [R, R, 0.6 * R, 0.36 * R, 0.34 * R]
    else:
        ys, rs = [0, 0.1, 0.45, 0.58, 0.66, 0.7], [0.9 * R, R, R, 0.55 * R, 0.3 * R, 0.32 * R]
    ys = np.asarray(ys) * u(0.9, 1.1)
    parts = [revolve(ys, rs, "glass" if kind in (0, 2) else "body", "bottle")]
    top, rtop = ys[-1], rs[-1]
    parts.append(cylinder((0, top - 0.01, 0), (0, top + 0.05, 0), rtop * 1.15, "secondary", "cap", n=10))
    # The label wraps only the front (+z) of the straight-walled section, as on real bottles: a
    # surface of revolution alone has no azimuth, and its colours are random per image.
    a, b = ((0, 1), (3, 4), (0, 1), (1, 2))[kind]
    y0, y1 = ys[a] + 0.15 * (ys[b] - ys[a]), ys[b] - 0.15 * (ys[b] - ys[a])
    parts.append(label_patch(R, y0, y1, np.radians(u(120, 160)), "light", "label"))
    if kind == 3:
        parts.append(torus((R * 0.95, ys[2] * 0.75, 0), (0, 0, 1), 0.12 * ys[-1] + 0.02, 0.025, "body", "handle", 12, 5))
    return parts


def _bus(rng, v):
    u, kind = rng.uniform, v % 3  # city bus, double decker, school bus (bonnet)
    r, W = u(0.05, 0.06), u(0.22, 0.26)
    H = u(0.27, 0.32) * (1.45 if kind == 1 else 1.0)
    yb = r * 0.7
    if kind == 2:
        prof = [(-0.5, yb), (0.5, yb), (0.5, yb + 0.35 * H), (0.42, yb + 0.45 * H), (0.36, yb + H), (-0.48, yb + H), (-0.5, yb + 0.95 * H)]
    else:
        prof = [(-0.5, yb), (0.5, yb), (0.5, yb + 0.93 * H), (0.47, yb + H), (-0.48, yb + H), (-0.5, yb + 0.95 * H)]
    parts = [extrude_x(prof, W, "body", "body", bevel=0.012)]
    bands = (0.55, 0.85) if kind == 1 else (0.68,)
    z_front = 0.36 if kind == 2 else 0.5
    for b in bands:
        for s in (-1, 1):
            parts.append(box((s * (W / 2 + 0.001), yb + b * H, -0.04 + (z_front - 0.5) / 2), (0.004, 0.22 * H, 0.82 + z_front - 0.5), "glass", "windows"))
    parts.append(box((0, yb + 0.7 * H, z_front + 0.002), (W * 0.85, 0.35 * H, 0.004), "glass", "windscreen"))
    axles = (-0.3, 0.3) if v < 3 else (-0.36, -0.22, 0.32)
    for z in axles:
        for s in (-1, 1):
            parts += _wheel(s * (W / 2 - 0.03), r, z, r, 0.05)
    for s in (-1, 1):
        parts.append(box((s * W * 0.35, yb + 0.12 * H, 0.5 + 0.003), (0.04, 0.02, 0.006), "light", "headlight"))
    return parts


def _car(rng, v):
    u, kind = rng.uniform, v % 5  # sedan, hatchback, SUV, pickup, van
    r = u(0.065, 0.075) * (1.2 if kind in (2, 3) else 1.0)
    W = u(0.4, 0.44)
    yb = r * (0.55 if kind not in (2, 3) else 0.75)
    hb = u(0.14, 0.17) * (1.2 if kind in (2, 3, 4) else 1.0)
    hc = u(0.11, 0.14) * (1.3 if kind == 4 else 1.0)
    yl, yr = yb + hb, yb + hb + hc
    nose = u(0.0, 0.03)
    prof = [(-0.48, yb), (0.48, yb), (0.5, yb + 0.03), (0.5, yl - 0.04 - nose), (0.45, yl - nose), (-0.47, yl + 0.01), (-0.5, yl - 0.03), (-0.5, yb + 0.02)]
    # glass house: (z at belt rear, z at roof rear, z at roof front, z at belt front)
    cab = {0: (-0.3, -0.2, 0.06, 0.2), 1: (-0.45, -0.4, 0.02, 0.18), 2: (-0.47, -0.45, 0.1, 0.22),
           3: (-0.06, -0.04, 0.15, 0.24), 4: (-0.48, -0.47, 0.3, 0.4)}[kind]
    cab = tuple(c + u(-0.02, 0.02) for c in cab)
    parts = [extrude_x(prof, W, "body", "body", bevel=0.02),
             extrude_x([(cab[0], yl - 0.01), (cab[3], yl - 0.01), (cab[2], yr - 0.012), (cab[1], yr - 0.012)], W * 0.86, "glass", "windows"),
             extrude_x([(cab[1] - 0.005, yr - 0.015), (cab[2] + 0.005, yr - 0.015), (cab[2] + 0.005, yr), (cab[1] - 0.005, yr)], W * 0.88, "body", "roof")]
    if kind == 3:  # the pickup bed is open: a dark floor marks it
        parts.append(box((0, yl + 0.001, -0.27), (W * 0.85, 0.004, 0.42), "dark", "bed"))
    for z in (-0.31, 0.31):
        for s in (-1, 1):
            parts += _wheel(s * (W / 2 - 0.04), r, z, r, 0.07)
    for s in (-1, 1):
        parts += [box((s * W * 0.35, yl - 0.04 - nose, 0.5), (0.07, 0.025, 0.01), "light", "headlight"),
                  box((s * W * 0.38, yl - 0.04, -0.5), (0.06, 0.025, 0.01), "secondary", "taillight")]
    return parts


def _chair(rng, v):
    u, kind = rng.uniform, v % 5  # four legs, slat back, armchair, office chair, bar stool
    hs = u(0.42, 0.48) * (1.55 if kind == 4 else 1.0)
    ws, ds, t = u(0.4, 0.5), u(0.4, 0.48), u(0.04, 0.06)
    hb = u(0.35, 0.5) * (0.5 if kind == 4 else 1.0)
    tilt = u(0.0, 0.08)
    zb = -ds / 2 + 0.02
    mat = "body"
    parts = [box((0, hs - t / 2, 0), (ws, t, ds), mat, "seat")]
    back = lambda w, x=0.0, name="back": extrude_x([(zb - 0.02, hs), (zb + 0.02, hs), (zb + 0.02 - tilt, hs + hb), (zb - 0.02 - tilt, hs + hb)], w, mat, name, x_center=x)
    if kind == 1:
        n = int(rng.integers(3, 6))
        parts += [back(0.035, x, "slat") for x in np.linspace(-ws / 2 + 0.04, ws / 2 - 0.04, n)]
        parts.append(box((0, hs + hb - 0.03, zb - tilt * 0.95), (ws, 0.06, 0.045), mat, "top_rail"))
    else:
        parts.append(back(ws * (0.9 if kind == 3 else 1.0)))
    if kind == 3:
        parts += [cylinder((0, 0.06, 0), (0, hs - t, 0), 0.025, "metal", "column", n=8)]
        for k in range(5):
            a = 2 * np.pi * k / 5
            parts.append(box((0.14 * np.sin(a), 0.05, 0.14 * np.cos(a)), (0.035, 0.03, 0.28), "dark", "star_leg", yaw=a))
            parts.append(ellipsoid((0.27 * np.sin(a), 0.025, 0.27 * np.cos(a)), (0.025, 0.025, 0.025), "dark", "caster", 4, 6))
    else:
        lw = u(0.03, 0.045)
        for sx in (-1, 1):
            for sz in (-1, 1):
                parts.append(box((sx * (ws / 2 - lw), (hs - t) / 2, sz * (ds / 2 - lw)), (lw, hs - t, lw), "secondary" if kind == 4 else mat, "leg"))
        if kind == 4:
            parts.append(torus((0, hs * 0.3, 0), (0, 1, 0), ws * 0.62, 0.012, "metal", "footrest", 16, 5))
    if kind == 2:
        for s in (-1, 1):
            parts += [box((s * (ws / 2 - 0.02), hs + 0.2, 0.0), (0.05, 0.035, ds * 0.9), mat, "armrest"),
                      box((s * (ws / 2 - 0.02), hs + 0.1, ds * 0.35), (0.035, 0.2, 0.035), mat, "arm_support")]
    return parts


def _diningtable(rng, v):
    u, kind = rng.uniform, v % 3  # four legs with apron, round pedestal, long trestle
    h, t = u(0.72, 0.78), u(0.03, 0.05)
    if kind == 1:
        rad = u(0.5, 0.6)
        return [cylinder((0, h - t, 0), (0, h, 0), rad, "body", "top", n=20),
                cylinder((0, 0.04, 0), (0, h - t, 0), 0.05, "secondary", "pedestal", n=10),
                cylinder((0, 0, 0), (0, 0.04, 0), rad * 0.5, "secondary", "foot", n=14)]
    L, D = (u(1.2, 1.5), u(0.75, 0.9)) if kind == 0 else (u(1.8, 2.2), u(0.8, 0.95))
    parts = [box((0, h - t / 2, 0), (L, t, D), "body", "top")]
    if kind == 0:
        lw = u(0.05, 0.07)
        for sx in (-1, 1):
            for sz in (-1, 1):
                parts.append(box((sx * (L / 2 - 0.08), (h - t) / 2, sz * (D / 2 - 0.08)), (lw, h - t, lw), "secondary", "leg"))
            parts.append(box((0, h - t - 0.05, sx * (D / 2 - 0.08)), (L - 0.16, 0.1, 0.02), "secondary", "apron"))
    else:
        for sx in (-1, 1):
            x = sx * (L / 2 - 0.25)
            parts += [box((x, (h - t) / 2, 0), (0.07, h - t, 0.1), "secondary", "trestle"),
                      box((x, 0.03, 0), (0.09, 0.06, D * 0.85), "secondary", "trestle_foot")]
        parts.append(box((0, 0.25, 0), (L - 0.5, 0.06, 0.05), "secondary", "stretcher"))
    return parts


def _motorbike(rng, v):
    u, kind = rng.uniform, v % 5  # sport, cruiser, dirt, scooter, touring
    R = (0.17, 0.17, 0.2, 0.11, 0.17)[kind] * u(0.95, 1.05)
    tyre = (0.045, 0.05, 0.035, 0.04, 0.05)[kind]
    zr, zf = (-0.35, 0.35) if kind != 1 else (-0.4, 0.4)
    parts = []
    for z, nm in ((zr, "wheel_rear"), (zf, "wheel_front")):
        parts += [torus((0, R, z), (1, 0, 0), R - tyre, tyre, "dark", nm, 18, 6),
                  cylinder((-0.03, R, z), (0.03, R, z), R * 0.55, "metal", nm + "_hub", n=10)]
    top = np.array([0, R + (0.5, 0.45, 0.6, 0.45, 0.52)[kind], zf - 0.13])
    for s in (-1, 1):
        parts.append(_tube((s * 0.05, R, zf), top + np.array([s * 0.05, 0, 0]), 0.016, "metal", "fork"))
    bw = (0.5, 0.75, 0.7, 0.55, 0.65)[kind]
    parts.append(cylinder((-bw / 2, top[1] + 0.04, top[2] - 0.03), (bw / 2, top[1] + 0.04, top[2] - 0.03), 0.014, "dark", "handlebar", n=6))
    if kind == 3:
        parts += [box((0, R + 0.05, -0.05), (0.22, 0.1, 0.5), "body", "floor"),
                  box((0, R + 0.2, -0.22), (0.26, 0.25, 0.28), "body", "rear_body"),
                  box((0, R + 0.28, zf - 0.15), (0.3, 0.42, 0.06), "body", "leg_shield"),
                  ellipsoid((0, R + 0.36, -0.22), (0.11, 0.03, 0.16), "dark", "seat", 4, 8)]
        return parts
    ys = R + (0.2, 0.15, 0.28, 0, 0.2)[kind]
    parts += [box((0, ys, 0.0), (0.16, 0.2, 0.26), "metal", "engine"),
              ellipsoid((0, ys + 0.2, 0.1), (0.11, 0.07, 0.16), "body", "tank"),
              ellipsoid((0, ys + 0.17, -0.17), (0.1, 0.03, 0.17), "dark", "seat", 4, 8),
              box((0, ys + 0.08, -0.3), (0.08, 0.12, 0.22), "body", "tail"),
              cylinder((0.1, ys - 0.07, 0.05), (0.11, ys + 0.02, zr - 0.1), 0.03, "metal", "exhaust", n=8),
              _tube((0, ys + 0.05, -0.1), (0, R, zr), 0.02, "secondary", "swingarm")]
    if kind in (0, 4):
        parts.append(ellipsoid((0, top[1] - 0.05, zf - 0.1), (0.13, 0.14, 0.12), "body", "fairing", 6, 10))
        parts.append(box((0, top[1] + 0.1, zf - 0.15), (0.14, 0.12, 0.01), "glass", "windscreen"))
    else:
        parts.append(cylinder((0, top[1] - 0.04, top[2] + 0.03), (0, top[1] - 0.04, top[2] + 0.07), 0.05, "light", "headlight", n=10))
    if kind == 4:
        parts += [box((0, ys + 0.3, -0.42), (0.26, 0.18, 0.2), "body", "top_box")]
        parts += [box((s * 0.16, ys + 0.02, -0.3), (0.1, 0.18, 0.26), "body", "pannier") for s in (-1, 1)]
    if kind == 2:
        parts += [box((0, R * 2 + 0.03, zf), (0.08, 0.015, 0.3), "secondary", "fender")]
    return parts


def _sofa(rng, v):
    u, kind = rng.uniform, v % 3  # three-seater with arms, loveseat without arms, L-shaped with chaise
    n_seats = (3, 2, 3)[kind]
    W, D = u(0.6, 0.7) * n_seats, u(0.8, 0.95)
    hs, hb, leg = u(0.4, 0.46), u(0.75, 0.95), u(0.04, 0.1)
    arm = u(0.15, 0.25) if kind != 1 else 0.0
    parts = [box((0, leg + (hs - 0.12 - leg) / 2, 0), (W, hs - 0.12 - leg, D), "body", "base"),
             box((0, (hs + hb) / 2, -D / 2 + 0.1), (W, hb - hs, 0.2), "body", "back")]
    cw = (W - 2 * arm) / n_seats
    for i in range(n_seats):
        x = -W / 2 + arm + cw * (i + 0.5)
        parts += [box((x, hs - 0.06, 0.1), (cw - 0.01, 0.12, D - 0.2), "secondary", "seat_cushion"),
                  box((x, hs + 0.2, -D / 2 + 0.25), (cw - 0.02, 0.35, 0.12), "secondary", "back_cushion")]
    if arm:
        parts += [box((s * (W / 2 - arm / 2), (leg + hs + 0.18) / 2, 0), (arm, hs + 0.18 - leg, D), "body", "armrest") for s in (-1, 1)]
    if kind == 2:
        cd = u(0.6, 0.8)
        parts.append(box((W / 2 - arm - cw / 2, leg + (hs - leg) / 2, D / 2 + cd / 2 - 0.01), (cw, hs - leg, cd), "body", "chaise"))
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(box((sx * (W / 2 - 0.06), leg / 2, sz * (D / 2 - 0.06)), (0.05, leg, 0.05), "dark", "leg"))
    return parts


def _rrect(w, h, y0, n=12):
    return _ring2(w / 2, h / 2, n, y0 + h / 2, power=0.4)


def _train(rng, v):
    u, kind = rng.uniform, v % 4  # high-speed, steam locomotive, diesel, tram
    W, H = u(0.15, 0.18), u(0.19, 0.23)
    yb, r = 0.045, 0.03
    parts = []
    if kind == 1:
        br = u(0.06, 0.075)
        parts += [cylinder((0, yb + 0.04 + br, -0.05), (0, yb + 0.04 + br, 0.42), br, "dark", "boiler", n=12),
                  cylinder((0, yb + 0.04 + br, 0.33), (0, yb + 0.04 + 2 * br + u(0.05, 0.09), 0.33), 0.025, "dark", "chimney", n=8, radius1=0.035),
                  box((0, yb + 0.03 + H / 2, -0.15), (W, H, 0.2), "body", "cab"),
                  box((0, yb + 0.04 + H * 0.35, -0.38), (W * 0.95, H * 0.7, 0.22), "body", "tender"),
                  box((0, yb + 0.02, 0.0), (W * 0.6, 0.04, 0.9), "secondary", "frame"),
                  box((0, yb + H * 0.75, -0.15 + 0.101), (W * 0.6, H * 0.25, 0.004), "glass", "cab_window")]
        for z in (0.3, 0.15, 0.0):
            parts += _wheel(0.0, 0.05, z, 0.05, W * 1.02)
        return parts
    if kind == 0:
        zs = np.array([-0.5, 0.1, 0.25, 0.37, 0.45])
        sc = np.interp(zs, [-0.5, 0.1, 0.45], [1.0, 1.0, 0.25])
        hs = np.interp(zs, [-0.5, 0.1, 0.45], [1.0, 1.0, 0.2])
        parts.append(loft_sections(zs, [_rrect(W * s, H * q, yb) for s, q in zip(sc, hs)], "body", "body", end=(0, yb + 0.02, 0.5)))
        parts.append(extrude_x([(0.1, yb + 0.78 * H), (0.3, yb + 0.55 * H), (0.24, yb + 0.45 * H)], W * 0.72, "glass", "cab_window"))
        front = 0.05
    else:
        prof = [(-0.5, yb), (0.5, yb), (0.5, yb + 0.9 * H), (0.46, yb + H), (-0.5, yb + H)] if kind == 2 else \
               [(-0.5, yb), (0.5, yb), (0.5, yb + H), (-0.5, yb + H)]
        parts.append(extrude_x(prof, W, "body", "body", bevel=0.01))
        parts.append(box((0, yb + 0.68 * H, 0.5 + 0.002), (W * 0.8, 0.3 * H, 0.004), "glass", "windscreen"))
        front = 0.4
    for s in (-1, 1):
        parts.append(box((s * (W / 2 + 0.001), yb + 0.65 * H, -0.05 - (0.45 - front) / 2 + 0.03), (0.004, 0.2 * H, 0.86 - (0.45 - front) - 0.1), "glass", "windows"))
    for z in (-0.35, 0.3):
        parts.append(box((0, yb - 0.005, z), (W * 0.8, 0.035, 0.16), "dark", "bogie"))
        for dz in (-0.05, 0.05):
            parts += _wheel(0.0, r, z + dz, r, W * 0.9, n=10)
    if kind == 3:
        top = yb + H
        parts += [_tube((0, top, -0.05), (0, top + 0.07, 0.02), 0.004, "metal", "pantograph"),
                  _tube((0, top + 0.07, 0.02), (0, top + 0.1, -0.05), 0.004, "metal", "pantograph"),
                  box((0, top + 0.1, -0.05), (W * 0.8, 0.008, 0.015), "metal", "pantograph_head")]
    return parts


def _tvmonitor(rng, v):
    u, kind = rng.uniform, v % 4  # flat TV on a stand, CRT, monitor on an arm, wide TV on feet
    aspect = (16 / 9, 4 / 3, 16 / 10, 21 / 9)[kind] * u(0.97, 1.03)
    w = 1.0
    h, d, b = w / aspect, (0.05, 0.0, 0.04, 0.035)[kind], u(0.02, 0.05)
    y0 = (0.15, 0.05, 0.25, 0.07)[kind]
    yc = y0 + h / 2
    parts = [box((0, yc, 0), (w, h, max(d, 0.06)), "dark" if kind != 1 else "body", "bezel"),
             box((0, yc, max(d, 0.06) / 2 + 0.002), (w - 2 * b, h - 2 * b, 0.004), "glass", "screen")]
    if kind == 1:
        depth = u(0.6, 0.8)
        parts.append(loft_sections([-0.03 - depth, -0.03], [_rrect(w * 0.45, h * 0.45, yc - h * 0.225, 8), _rrect(w * 0.98, h * 0.98, yc - h * 0.49, 8)], "body", "tube"))
    elif kind == 0:
        parts += [box((0, y0 / 2, -0.02), (0.06, y0, 0.04), "metal", "neck"), box((0, 0.01, -0.02), (0.35, 0.02, 0.22), "metal", "base")]
    elif kind == 2:
        parts += [box((0, y0 / 2 + 0.05, -0.12), (0.08, y0 + 0.1, 0.03), "metal", "arm"),
                  box((0, 0.01, -0.1), (0.3, 0.02, 0.25), "metal", "base"),
                  box((0, yc, -0.06), (0.2, 0.2, 0.06), "dark", "back")]
    else:
        parts += [box((s * w * 0.4, y0 / 2, 0.0), (0.04, y0, 0.18), "metal", "foot") for s in (-1, 1)]
    return parts


BUILDERS = {
    "aeroplane": _aeroplane, "bicycle": _bicycle, "boat": _boat, "bottle": _bottle, "bus": _bus, "car": _car,
    "chair": _chair, "diningtable": _diningtable, "motorbike": _motorbike, "sofa": _sofa, "train": _train, "tvmonitor": _tvmonitor,
}

@lru_cache(maxsize=None)
def cad_model(category: str, index: int, seed: int = 0) -> CADModel:
    """Model ``index`` (1-based) of ``category``; the same ``(category, index, seed)`` always
    gives the same model. The variant cycles with ``index``; dimensions come from the RNG."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if not 1 <= int(index) <= NUM_CAD_MODELS[category]:
        raise ValueError(f"index for {category} must lie in [1, {NUM_CAD_MODELS[category]}], got {index}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(CATEGORIES.index(category), int(index))))
    return _assemble(category, int(index), BUILDERS[category](rng, int(index) - 1))


def cad_models(category: str, seed: int = 0) -> list[CADModel]:
    """All ``NUM_CAD_MODELS[category]`` models of a category, in ``cad_index`` order."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    return [cad_model(category, i, seed) for i in range(1, NUM_CAD_MODELS[category] + 1)]


def write_cad_library(root: str | os.PathLike, categories=CATEGORIES, seed: int = 0) -> list[Path]:
    """Write ``root/CAD/<category>/NN.off`` for every model (atomically); returns the paths.

    The files are in PASCAL3D+'s **on-disk frame (z up)**, like the real CAD files, so that one
    reader serves both: ``mesh.read_off(path, z_up=True)`` gives back ``cad_model(...).verts``
    exactly (``mesh.y_up_to_z_up`` is a permutation and a negation; ``%.9g`` round-trips float32).
    """
    paths = []
    for cat in categories:
        for m in cad_models(cat, seed):
            path = Path(root) / "CAD" / cat / f"{m.index:02d}.off"
            write_off(path, y_up_to_z_up(m.verts), m.faces)
            paths.append(path)
    return paths
