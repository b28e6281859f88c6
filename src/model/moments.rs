//! Moments of a set of values (the seven gradient statistics come from them), exact to combine
//! across sets, and the linear layer's per-sample gradient moments without forming the
//! gradient.

/// Value sets per [`Moments::of_lanes`] call.
pub const LANES: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn of_lanes_avx512(v: &[f32], len: usize) -> [Moments; LANES] {
    sets::<LANES>(v, len)
}

/// [`sets`] compiled for AVX2 (four f64 lanes a register, where the baseline has two).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn of_lanes_avx2(v: &[f32], len: usize) -> [Moments; LANES] {
    sets::<LANES>(v, len)
}

/// The moments of `L` interleaved sets of `len` values (value e of set l at `v[e·L + l]`):
/// two passes, the sum, L1, min and max, then the powered deviations from the mean, in value
/// order, f64 throughout.
#[inline(always)]
fn sets<const L: usize>(v: &[f32], len: usize) -> [Moments; L] {
    assert!(v.len() >= len * L, "{len} values in {L} lanes");
    if len == 0 {
        return [Moments::EMPTY; L];
    }
    let n = len as f64;
    let (mut s, mut l1) = ([0f64; L], [0f64; L]);
    let (mut mn, mut mx) = ([f64::INFINITY; L], [f64::NEG_INFINITY; L]);
    for row in v[..len * L].chunks_exact(L) {
        for l in 0..L {
            let x = row[l] as f64;
            s[l] += x;
            l1[l] += x.abs();
            mn[l] = mn[l].min(x);
            mx[l] = mx[l].max(x);
        }
    }
    let mut mean = [0f64; L];
    for l in 0..L {
        mean[l] = s[l] / n;
    }
    let (mut m2, mut m3, mut m4) = ([0f64; L], [0f64; L], [0f64; L]);
    for row in v[..len * L].chunks_exact(L) {
        for l in 0..L {
            let d = row[l] as f64 - mean[l];
            let d2 = d * d;
            m2[l] += d2;
            m3[l] += d2 * d;
            m4[l] += d2 * d2;
        }
    }
    std::array::from_fn(|l| Moments {
        n,
        mean: mean[l],
        m2: m2[l],
        m3: m3[l],
        m4: m4[l],
        l1: l1[l],
        min: mn[l],
        max: mx[l],
    })
}

/// Central-moment summary of a set of values: count, mean, M2..M4 (sums of powered
/// deviations), L1, min, max. Combined exactly across sets (Chan/Pébay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub l1: f64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    pub const EMPTY: Moments = Moments {
        n: 0.0,
        mean: 0.0,
        m2: 0.0,
        m3: 0.0,
        m4: 0.0,
        l1: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// Two passes over the values (mean, then powered deviations), f64 throughout.
    pub fn of(values: &[f32]) -> Moments {
        let [m] = sets::<1>(values, values.len());
        m
    }

    /// [`Moments::of`] for [`LANES`] value sets at once, interleaved: value e of set l at
    /// `v[e·LANES + l]`, `len` values each. The same code as [`Moments::of`] (one set is
    /// one lane), so each set's moments are bit for bit its own; the sets run side by side
    /// in vector lanes, where one set alone is a chain of dependent additions (latency
    /// bound).
    pub fn of_lanes(v: &[f32], len: usize) -> [Moments; LANES] {
        #[cfg(target_arch = "x86_64")]
        if super::gemm::avx512::available() {
            // SAFETY: AVX-512F is present
            return unsafe { of_lanes_avx512(v, len) };
        }
        #[cfg(target_arch = "x86_64")]
        if super::gemm::has_avx2() {
            // SAFETY: AVX2 is present
            return unsafe { of_lanes_avx2(v, len) };
        }
        sets::<LANES>(v, len)
    }

    /// From raw power sums S1..S4 of `n` values (used where the values factorise).
    pub fn from_power_sums(n: f64, s: [f64; 4], l1: f64, min: f64, max: f64) -> Moments {
        let mu = s[0] / n;
        let m2 = (s[1] - n * mu * mu).max(0.0);
        let m3 = s[2] - 3.0 * mu * s[1] + 3.0 * mu * mu * s[0] - n * mu.powi(3);
        let m4 = (s[3] - 4.0 * mu * s[2] + 6.0 * mu * mu * s[1] - 4.0 * mu.powi(3) * s[0]
            + n * mu.powi(4))
        .max(0.0);
        Moments {
            n,
            mean: mu,
            m2,
            m3,
            m4,
            l1,
            min,
            max,
        }
    }

    /// Moments of the union of two value sets.
    pub fn combine(a: &Moments, b: &Moments) -> Moments {
        if a.n == 0.0 {
            return *b;
        }
        if b.n == 0.0 {
            return *a;
        }
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        let (na, nb) = (a.n, b.n);
        let mean = a.mean + d * nb / n;
        let m2 = a.m2 + b.m2 + d * d * na * nb / n;
        let m3 = a.m3
            + b.m3
            + d.powi(3) * na * nb * (na - nb) / (n * n)
            + 3.0 * d * (na * b.m2 - nb * a.m2) / n;
        let m4 = a.m4
            + b.m4
            + d.powi(4) * na * nb * (na * na - na * nb + nb * nb) / n.powi(3)
            + 6.0 * d * d * (na * na * b.m2 + nb * nb * a.m2) / (n * n)
            + 4.0 * d * (na * b.m3 - nb * a.m3) / n;
        Moments {
            n,
            mean,
            m2,
            m3,
            m4,
            l1: a.l1 + b.l1,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
        }
    }

    /// [l1, l2, min, max, mean, skew, kurt] (population moments; skew and kurt 0 when m2 = 0).
    pub fn stats(&self) -> [f64; 7] {
        let l2 = (self.m2 + self.n * self.mean * self.mean).max(0.0).sqrt();
        let (c2, c3, c4) = (self.m2 / self.n, self.m3 / self.n, self.m4 / self.n);
        let (skew, kurt) = if c2 > 0.0 {
            (c3 / c2.powf(1.5), c4 / (c2 * c2) - 3.0)
        } else {
            (0.0, 0.0)
        };
        [self.l1, l2, self.min, self.max, self.mean, skew, kurt]
    }
}

/// Moments of the linear layer's per-sample gradient without forming it: weight entries are
/// g_i·a_j (g = dL/d(output), a = the layer's input), so their power sums factorise and min/max
/// come from the four corner products; bias entries (with `bias`) are g_i. With `zero_sum` (g
/// sums to zero in exact arithmetic, as every softmax output gradient does) the entries' sum,
/// Σg·(Σa + 1), is exactly 0 and is written as such instead of the rounding noise of the f32
/// values.
pub fn linear_moments(g: &[f32], a: &[f32], zero_sum: bool, bias: bool) -> Moments {
    let pw = |v: &[f32]| {
        let mut s = [0f64; 4];
        let (mut l1, mut mn, mut mx) = (0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &x in v {
            let x = x as f64;
            s[0] += x;
            s[1] += x * x;
            s[2] += x * x * x;
            s[3] += x * x * x * x;
            l1 += x.abs();
            mn = mn.min(x);
            mx = mx.max(x);
        }
        (s, l1, mn, mx)
    };
    let (gs, gl1, gmin, gmax) = pw(g);
    let (as_, al1, amin, amax) = pw(a);
    let corners = [gmin * amin, gmin * amax, gmax * amin, gmax * amax];
    let wmin = corners.iter().cloned().fold(f64::INFINITY, f64::min);
    let wmax = corners.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let b = if bias { 1.0 } else { 0.0 };
    let n = (g.len() * a.len()) as f64 + b * g.len() as f64;
    let mut s = [0, 1, 2, 3].map(|k| gs[k] * as_[k] + b * gs[k]);
    if zero_sum {
        s[0] = 0.0;
    }
    let (mn, mx) = if bias {
        (wmin.min(gmin), wmax.max(gmax))
    } else {
        (wmin, wmax)
    };
    Moments::from_power_sums(n, s, gl1 * al1 + b * gl1, mn, mx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lanes give each set's `Moments::of` bit for bit: mixed signs and magnitudes, −0,
    /// a constant set, NaN (min and max skip it, as `f64::min`/`max` do).
    #[test]
    fn lanes_equal_one_set_at_a_time() {
        let len = 1001;
        let sets: Vec<Vec<f32>> = (0..LANES)
            .map(|l| {
                (0..len)
                    .map(|i| match (l, i % 17) {
                        (3, _) => 2.5,
                        (5, 4) => f32::NAN,
                        (_, 0) => -0.0,
                        _ => {
                            ((i * (l + 3) * 7919 % 1000) as f32 - 500.0) * 10f32.powi(l as i32 - 4)
                        }
                    })
                    .collect()
            })
            .collect();
        let mut v = vec![0f32; len * LANES];
        for (l, set) in sets.iter().enumerate() {
            for (e, x) in set.iter().enumerate() {
                v[e * LANES + l] = *x;
            }
        }
        let got = Moments::of_lanes(&v, len);
        let bits =
            |m: &Moments| [m.n, m.mean, m.m2, m.m3, m.m4, m.l1, m.min, m.max].map(|x| x.to_bits());
        for (l, set) in sets.iter().enumerate() {
            assert_eq!(bits(&got[l]), bits(&Moments::of(set)), "lane {l}");
        }
        assert_eq!(Moments::of_lanes(&[], 0)[0], Moments::EMPTY);
    }
}
