"""Toy CMS NanoAOD events: H->ZZ*->4mu signal against ZZ and Drell-Yan backgrounds.

The streaming and training layers need labelled ROOT files that look like the
real thing (NanoAOD branch names, jagged muon and jet collections sorted by pt,
falling spectra, acceptance holes, inefficiencies) and that a small network
learns well but not perfectly. Kinematics are proper four-vectors: resonances
decay isotropically in their rest frames and are boosted to the lab.

Everything is vectorised with numpy, in float32, over blocks of ``_BLOCK``
events; per-muon arrays are slot-major, shape (4, n). A block's random stream
depends only on (seed, process, block index), so a file is the same whatever
the number of threads generating blocks (numpy releases the GIL in its loops).

>>> import tempfile, uproot
>>> path = generate_file(tempfile.mkdtemp() + "/h4mu.root", "signal", 1000, seed=7)
>>> events = uproot.open(path)["Events"]
>>> events.num_entries, events.keys()[:6]
(1000, ['run', 'luminosityBlock', 'event', 'nMuon', 'Muon_pt', 'Muon_eta'])
"""

from __future__ import annotations

import collections
import itertools
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import awkward as ak
import numpy as np
import uproot

PROCESSES = ("signal", "background")

MZ, GZ, MH, MMU, EBEAM = 91.1876, 2.4952, 125.0, 0.105658, 6500.0  # GeV
F32 = np.float32
_BLOCK = 1 << 17  # events per random stream and per TTree.extend: bounds memory
_EVENTS_PER_LUMI = 1000
_WORKERS = min(4, os.cpu_count() or 1)
# LZ4: smaller than uncompressed for a little more write time; ZSTD(1) is smaller still, but its write time
# then costs as much as generating (figures in docs/producing.md).
_COMPRESSION = uproot.LZ4(1)
_BRANCHES = {  # records become NanoAOD collections: counter nMuon, branches Muon_pt, ...
    "run": np.uint32, "luminosityBlock": np.uint32, "event": np.uint64,
    "Muon": ak.types.from_datashape("var * {pt: float32, eta: float32, phi: float32, mass: float32, charge: int32}",
                                    highlevel=False),
    "Jet": ak.types.from_datashape("var * {pt: float32, eta: float32, phi: float32, btag: float32}", highlevel=False),
    "MET_pt": np.float32, "MET_phi": np.float32,
}


# ---- random numbers and four-vectors (tuples E, px, py, pz of float32 arrays) -----

def _uniform(rng, lo, hi, size):
    return lo + (hi - lo) * rng.random(size, dtype=F32)


def _phi(rng, size):
    return _uniform(rng, -np.pi, np.pi, size)


def _pareto(rng, lo, alpha, size):
    """Power-law spectrum dN/dx ~ x^-(alpha+1) above `lo`, cut at the beam energy."""
    return np.minimum(lo * np.exp(rng.standard_exponential(size, F32) / alpha), EBEAM)


def _poisson(rng, mean, n, kmax=16):
    """Inverse CDF: several times faster than Generator.poisson for small means."""
    k = np.arange(kmax)
    pmf = np.exp(-mean + k * np.log(mean) - np.cumsum(np.log(np.maximum(k, 1))))
    return np.searchsorted(np.cumsum(pmf), rng.random(n)).astype(np.int32)


def _p4(pt, y, phi, m):
    """(E, px, py, pz) from transverse momentum, rapidity, azimuth and mass."""
    mt, e = np.sqrt(m * m + pt * pt), np.exp(y)
    return mt * (e + 1 / e) / 2, pt * np.cos(phi), pt * np.sin(phi), mt * (e - 1 / e) / 2


def _decay(rng, parent, m, m1, m2, cos=None):
    """Two-body decay, isotropic in the rest frame unless `cos` (polar angle to the beam) is given;
    both daughters boosted along the parent's velocity: p' = p + (g^2/(g+1) b.p + g E) b."""
    n = len(parent[0])
    q = np.sqrt(np.maximum((m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2), 0)) / (2 * m)
    c = _uniform(rng, -1, 1, n) if cos is None else cos
    s, phi = np.sqrt(1 - c * c), _phi(rng, n)
    k = (q * s * np.cos(phi), q * s * np.sin(phi), q * c)
    g, b = parent[0] / m, [pi / parent[0] for pi in parent[1:]]
    bk = b[0] * k[0] + b[1] * k[1] + b[2] * k[2]
    h = g * g / (g + 1) * bk
    daughters = []
    for e, sign in ((np.sqrt(m1 * m1 + q * q), 1), (np.sqrt(m2 * m2 + q * q), -1)):  # momenta +k and -k
        a = sign * h + g * e
        daughters.append((g * (e + sign * bk), *(sign * ki + a * bi for ki, bi in zip(k, b))))
    return daughters


def _muons(rng, bosons):
    """Each (Z, mass) to mu+ mu-: slot-major (2*len(bosons), n) px, py, pt, eta, charge."""
    mus = [mu for z, m in bosons for mu in _decay(rng, z, m, MMU, MMU)]
    px, py, pz = (np.stack([mu[i] for mu in mus]) for i in (1, 2, 3))
    pt = np.sqrt(px * px + py * py)
    eta = np.sign(pz) * np.log((np.sqrt(pt * pt + pz * pz) + np.abs(pz)) / pt)
    q = np.repeat(np.array([1, -1] * len(bosons), np.int32)[:, None], pt.shape[1], axis=1)
    return dict(px=px, py=py, pt=pt, eta=eta, q=q)


# ---- line shapes --------------------------------------------------------------

def _breit_wigner(rng, n, lo, hi):
    """Z line shape truncated to [lo, hi] by inverting the Cauchy CDF."""
    a, b = np.arctan(2 * (np.array([lo, hi]) - MZ) / GZ)
    return (MZ + GZ / 2 * np.tan(_uniform(rng, a, b, n))).astype(F32)


def _hzz_mass_table(step=0.5, levels=1 << 17):
    """Cells of dGamma(H->ZZ*) ~ sqrt(lam) (lam + 12 x1 x2) BW(m1) BW(m2) m1 m2 over (m1 > m2),
    their CDF, and a guide table: the cells where CDF = 0, 1/levels, 2/levels, ... fall."""
    a, b = np.meshgrid(np.arange(40, 120, step) + step / 2, np.arange(4, 66, step) + step / 2, indexing="ij")
    x1, x2 = (a / MH) ** 2, (b / MH) ** 2
    lam = (1 - x1 - x2) ** 2 - 4 * x1 * x2
    bw = lambda m: 1 / ((m * m - MZ * MZ) ** 2 + (MZ * GZ) ** 2)  # noqa: E731
    rho = np.sqrt(np.clip(lam, 0, None)) * (lam + 12 * x1 * x2) * bw(a) * bw(b) * a * b
    keep = (a + b < MH) & (b < a) & (rho > 0)
    cdf = np.cumsum(rho[keep])
    cdf /= cdf[-1]
    guide = np.minimum(np.searchsorted(cdf, np.arange(levels + 1) / levels), len(cdf) - 1).astype(np.int32)
    return a[keep].astype(F32), b[keep].astype(F32), cdf, guide, step


_HZZ = _hzz_mass_table()


def _hzz_masses(rng, n):
    """The on-shell Z and off-shell Z* masses, jointly as the Higgs decays to them."""
    m1, m2, cdf, guide, step = _HZZ
    u = rng.random(n)
    level = (u * (len(guide) - 1)).astype(np.int32)
    lo, hi = guide[level], guide[level + 1]  # the cell holding u lies in [lo, hi]
    cell = lo + (cdf[lo] < u)  # exact where hi <= lo + 1; a binary search for the rest
    wide = np.flatnonzero(hi > lo + 1)
    cell[wide] = np.searchsorted(cdf, u[wide])
    return m1[cell] + _uniform(rng, -step / 2, step / 2, n), m2[cell] + _uniform(rng, -step / 2, step / 2, n)


# ---- processes: truth-level muons (4 slots), neutrinos, b jets, jet activity -------

def _truth(n, mu, **extra):
    zeros = lambda *shape: np.zeros(shape, F32)  # noqa: E731
    return dict(mu, ok=np.ones((4, n), bool), nu_px=zeros(n), nu_py=zeros(n), b_pt=zeros(2, n),
                b_eta=zeros(2, n), b_phi=zeros(2, n), b_ok=np.zeros((2, n), bool)) | extra


def _higgs(rng, n):
    """gg->H->ZZ*->4mu: soft pt from initial-state radiation, which also gives harder extra jets."""
    h = _p4(rng.standard_gamma(1.6, n, F32) * 18, rng.standard_normal(n, F32) * 1.5, _phi(rng, n), F32(MH))
    m1, m2 = _hzz_masses(rng, n)
    z1, z2 = _decay(rng, h, MH, m1, m2)
    return _truth(n, _muons(rng, [(z1, m1), (z2, m2)]), n_jet=_poisson(rng, 0.7, n), alpha=np.full(n, 2.8, F32))


def _zz(rng, n):
    """qq->ZZ->4mu continuum; one Z off shell (Z/gamma*) in 20% of events makes the low m4l tail."""
    m1 = _breit_wigner(rng, n, 60, 120)
    m2 = np.where(rng.random(n, F32) < 0.2, 12 * 5 ** rng.random(n, F32), _breit_wigner(rng, n, 60, 120))
    m = m1 + m2 + rng.standard_gamma(1.5, n, F32) * 40  # threshold turn-on, then a falling spectrum
    zz = _p4(rng.standard_gamma(1.2, n, F32) * 15, rng.standard_normal(n, F32) * 1.8, _phi(rng, n), m)
    # t-channel quark exchange pushes the Z bosons forward: half flat, half ~ cos^2
    forward = np.sign(_uniform(rng, -1, 1, n)) * np.cbrt(rng.random(n, F32))
    cos = np.where(rng.random(n, F32) < 0.5, _uniform(rng, -1, 1, n), forward)
    z1, z2 = _decay(rng, zz, m, m1, m2, cos)
    return _truth(n, _muons(rng, [(z1, m1), (z2, m2)]), n_jet=_poisson(rng, 0.5, n), alpha=np.full(n, 3.3, F32))


def _drell_yan(rng, n):
    """Z->mumu + b bbar: 0-2 soft non-prompt muons (and neutrinos) from semileptonic b decays."""
    m = _breit_wigner(rng, n, 60, 120)
    z = _p4(rng.standard_gamma(1.0, n, F32) * 12, rng.standard_normal(n, F32) * 2.0, _phi(rng, n), m)
    b_pt, b_eta, b_phi = _pareto(rng, 15, 2.6, (2, n)), rng.standard_normal((2, n), F32) * 1.8, _phi(rng, (2, n))
    # momentum fractions of the b hadron carried by the muon and the neutrino: pdf 2(1-x)
    x_mu, x_nu = 1 - np.sqrt(rng.random((2, 2, n), F32))
    b_ok = np.arange(2)[:, None] < np.searchsorted([0.25, 0.65], rng.random(n))  # 0/1/2 muons: 25/40/35%
    pt, phi = x_mu * b_pt, b_phi + rng.standard_normal((2, n), F32) * 0.1  # muon close to its b jet
    extra = dict(px=pt * np.cos(phi), py=pt * np.sin(phi), pt=pt, eta=b_eta + rng.standard_normal((2, n), F32) * 0.1,
                 q=np.where(rng.random((2, n)) < 0.5, -1, 1).astype(np.int32))
    nu = np.where(b_ok, x_nu * b_pt, 0)
    return _truth(n, {k: np.concatenate([v, extra[k]]) for k, v in _muons(rng, [(z, m)]).items()},
                  ok=np.concatenate([np.ones((2, n), bool), b_ok]),
                  nu_px=(nu * np.cos(b_phi)).sum(0), nu_py=(nu * np.sin(b_phi)).sum(0),
                  b_pt=(1 - x_nu) * b_pt, b_eta=b_eta, b_phi=b_phi, b_ok=b_ok,  # the jet misses the neutrino
                  n_jet=_poisson(rng, 1.0, n), alpha=np.full(n, 3.3, F32))


_MIXTURES = {"signal": ((1.0, _higgs),), "background": ((0.45, _zz), (0.55, _drell_yan))}


def _mix(rng, n, components):
    """Draw how many events of each process, then shuffle: any slice of a file is a fair sample."""
    counts = rng.multinomial(n, [f for f, _ in components])
    parts = [fn(rng, int(k)) for k, (_, fn) in zip(counts, components)]
    if len(parts) == 1:
        return parts[0]
    order = rng.permutation(n)
    return {key: np.concatenate([p[key] for p in parts], axis=-1).take(order, axis=-1) for key in parts[0]}


# ---- detector -------------------------------------------------------------------

def _jagged(counts, **fields):
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    content = ak.contents.RecordArray([ak.contents.NumpyArray(v) for v in fields.values()], list(fields))
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))


def _pt_order(pt, seen):
    """Flat indices into slot-major arrays of the seen muons, event by event, highest pt first."""
    key = np.where(seen, pt, -1)
    rank = np.zeros(pt.shape, np.uint8)  # rank of a muon = number of muons in its event with higher pt
    for a, b in itertools.combinations(range(len(pt)), 2):
        b_first = key[b] > key[a]
        rank[a] += b_first
        rank[b] += ~b_first
    counts = seen.sum(0, dtype=np.int32)
    flat = np.flatnonzero(seen)
    order = np.empty(len(flat), np.int64)
    order[(np.cumsum(counts) - counts)[flat % pt.shape[1]] + rank.ravel()[flat]] = flat
    return order, counts


def _truncated_normal(rng, sigma, limit, n):
    x = rng.standard_normal(n, F32) * sigma
    while (bad := np.abs(x) > limit).any():
        x[bad] = rng.standard_normal(int(bad.sum()), F32) * sigma
    return x


def _detector(rng, t, n):
    """Muon acceptance, resolution and efficiency; jets; MET from what escapes plus resolution."""
    sigma = 0.01 + 0.01 * np.abs(t["eta"]) / 2.4 + 1e-4 * t["pt"]  # curvature resolution, worse forward
    pt = t["pt"] * (1 + sigma * rng.standard_normal((4, n), F32))
    eff = 0.97 - 0.25 * np.exp(np.minimum(5 - pt, 0) / 4)
    seen = t["ok"] & (np.abs(t["eta"]) < 2.4) & (pt > 5) & (rng.random((4, n), F32) < eff)
    lost = t["ok"] & ~seen  # an unreconstructed muon shows up as MET
    met_x = t["nu_px"] + np.where(lost, t["px"], 0).sum(0)
    met_y = t["nu_py"] + np.where(lost, t["py"], 0).sum(0)
    order, n_mu = _pt_order(pt, seen)
    px, py = t["px"].ravel()[order], t["py"].ravel()[order]  # phi only where needed: arctan2 is slow
    muon = _jagged(n_mu, pt=pt.ravel()[order], eta=t["eta"].ravel()[order], phi=np.arctan2(py, px),
                   mass=np.full(len(order), MMU, F32), charge=t["q"].ravel()[order])

    light = np.repeat(np.arange(n), t["n_jet"])  # event index of each jet from QCD radiation
    m = len(light)
    b_ok = t["b_ok"] & (t["b_pt"] > 20) & (np.abs(t["b_eta"]) < 4.7)
    idx = np.concatenate([light, np.nonzero(b_ok)[1]])
    jpt = np.concatenate([_pareto(rng, 20, t["alpha"][light], m), t["b_pt"][b_ok]])
    is_b = np.concatenate([rng.random(m, F32) < 0.04, np.ones(len(idx) - m, bool)])
    u = rng.random(len(idx), F32)
    btag = np.where(is_b, np.sqrt(np.sqrt(u)), 1 - np.sqrt(np.sqrt(np.sqrt(u))))  # pdf 4x^3, 8(1-x)^7
    order = np.argsort(idx + 1 / (1 + jpt), kind="stable")  # by event, then pt descending
    jet = _jagged(np.bincount(idx, minlength=n), pt=jpt[order],
                  eta=np.concatenate([_truncated_normal(rng, 2.2, 4.7, m), t["b_eta"][b_ok]])[order],
                  phi=np.concatenate([_phi(rng, m), t["b_phi"][b_ok]])[order], btag=btag[order])

    res = 4 + 0.5 * np.sqrt(np.bincount(idx, jpt, minlength=n))  # grows with hadronic activity
    met_x = met_x + res * rng.standard_normal(n, F32)
    met_y = met_y + res * rng.standard_normal(n, F32)
    return muon, jet, np.hypot(met_x, met_y).astype(F32), np.arctan2(met_y, met_x).astype(F32)


# ---- files ----------------------------------------------------------------------

def _block(process, seed, block, n):
    rng = np.random.default_rng(np.random.SeedSequence([seed, PROCESSES.index(process), block]))
    muon, jet, met_pt, met_phi = _detector(rng, _mix(rng, n, _MIXTURES[process]), n)
    index = block * _BLOCK + np.arange(n, dtype=np.uint64)
    return {"run": np.ones(n, np.uint32), "luminosityBlock": (index // _EVENTS_PER_LUMI + 1).astype(np.uint32),
            "event": index + 1, "Muon": muon, "Jet": jet, "MET_pt": met_pt, "MET_phi": met_phi}


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def generate_file(path, process: str, events: int, seed: int = 0, tree: str = "Events") -> pathlib.Path:
    """Write `events` events of `process` as a NanoAOD-like TTree; same arguments, same data."""
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    _check_count("events", events, 1)
    _check_count("seed", seed, 0)
    path = pathlib.Path(path)
    blocks = [(process, int(seed), b, min(_BLOCK, events - s)) for b, s in enumerate(range(0, events, _BLOCK))]
    with uproot.recreate(path, compression=_COMPRESSION) as f, ThreadPoolExecutor(_WORKERS) as pool:
        out = f.mktree(tree, _BRANCHES)
        pending = collections.deque()
        for args in blocks:  # at most _WORKERS + 1 blocks in memory
            pending.append(pool.submit(_block, *args))
            if len(pending) > _WORKERS:
                out.extend(pending.popleft().result())
        while pending:
            out.extend(pending.popleft().result())
    return path


@dataclass(frozen=True)
class DemoFiles:
    """(path, label) pairs, label 1 for signal and 0 for background."""

    train: list[tuple[pathlib.Path, int]]
    holdout: list[tuple[pathlib.Path, int]]


def generate_demo(outdir, events_per_class: int, holdout_per_class: int, seed: int = 0) -> DemoFiles:
    """Training and holdout files for both classes. The holdout seed is hashed from `seed`
    (not `seed + 1`), so one run's holdout is not another run's training data."""
    _check_count("events_per_class", events_per_class, 1)
    _check_count("holdout_per_class", holdout_per_class, 1)
    _check_count("seed", seed, 0)
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    hold_seed = int(np.random.SeedSequence([seed, 0x401D]).generate_state(1, np.uint64)[0])
    files = {}
    for split, n, s in (("train", events_per_class, seed), ("holdout", holdout_per_class, hold_seed)):
        prefix = "" if split == "train" else "holdout_"
        files[split] = [(generate_file(outdir / f"{prefix}{p}.root", p, n, s), int(p == "signal"))
                        for p in PROCESSES]
    return DemoFiles(**files)
