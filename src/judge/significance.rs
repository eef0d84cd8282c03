//! Significance tests the rules use: the exact binomial tail, Wilson score intervals and
//! Newcombe's interval for a difference of two ratios, on plain `f64` arithmetic.

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function `I_x(a, b)`.
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`: how surprising `k` failures in `n` are when the
/// true ratio is `p`. Exact (through the incomplete beta function) for any `n`.
pub fn binomial_upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    inc_beta(k as f64, (n - k + 1) as f64, p).clamp(0.0, 1.0)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, ~1e-9).
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let low = 0.024_25;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The one-sided Wilson score interval `(lower, upper)` for `k` of `n` at `confidence`.
pub fn wilson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = normal_quantile(confidence);
    let n = n as f64;
    let phat = k as f64 / n;
    let z2 = z * z;
    let centre = phat + z2 / (2.0 * n);
    let spread = z * (phat * (1.0 - phat) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - spread) / denom).max(0.0),
        ((centre + spread) / denom).min(1.0),
    )
}

/// Upper end of the one-sided Wilson score interval.
pub fn wilson_upper(k: u64, n: u64, confidence: f64) -> f64 {
    wilson(k, n, confidence).1
}

/// Lower confidence bound of `p1 - p2` (Newcombe's hybrid score method, from the two
/// Wilson intervals); well behaved with small and zero counts.
pub fn newcombe_lower(k1: u64, n1: u64, k2: u64, n2: u64, confidence: f64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return -1.0;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let (l1, _) = wilson(k1, n1, confidence);
    let (_, u2) = wilson(k2, n2, confidence);
    p1 - p2 - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt()
}

/// Approximate one-sided p-value of `p1 - p2 > margin` (unpooled z), for the record.
pub fn difference_p_value(k1: u64, n1: u64, k2: u64, n2: u64, margin: f64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let se = (p1 * (1.0 - p1) / n1 as f64 + p2 * (1.0 - p2) / n2 as f64).sqrt();
    if se == 0.0 {
        return if p1 - p2 > margin { 0.0 } else { 1.0 };
    }
    normal_sf((p1 - p2 - margin) / se)
}

/// `P(Z > z)` for a standard normal `Z` (complementary error function, ~1e-7).
pub fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_known_values() {
        // P(X >= 1 | n = 10, p = 0.1) = 1 - 0.9^10
        let v = binomial_upper_tail(1, 10, 0.1);
        assert!((v - (1.0 - 0.9f64.powi(10))).abs() < 1e-12, "{v}");
        // P(X >= 10 | n = 10, p = 0.5) = 0.5^10
        assert!((binomial_upper_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-15);
        // P(X >= 3 | n = 20, p = 0.05) = 0.07548...
        assert!((binomial_upper_tail(3, 20, 0.05) - 0.075_483_6).abs() < 1e-6);
        assert_eq!(binomial_upper_tail(0, 5, 0.3), 1.0);
        // Large n stays finite and sensible.
        let big = binomial_upper_tail(450, 20_000, 0.02);
        assert!(big > 0.0 && big < 0.01, "{big}");
    }

    #[test]
    fn wilson_bounds_behave() {
        let u = wilson_upper(1, 100, 0.95);
        assert!(u > 0.01 && u < 0.06, "{u}");
        assert_eq!(wilson_upper(0, 0, 0.99), 1.0);
        assert!(wilson_upper(0, 1_000_000, 0.999) < 1e-5);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_sf(1.959_964) - 0.025).abs() < 1e-6);
        let (lo, hi) = wilson(0, 50, 0.99);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.05 && hi < 0.15, "{hi}");
        // A clear difference has a positive lower bound; equal rates do not.
        assert!(newcombe_lower(400, 20_000, 200, 20_000, 0.999) > 0.005);
        assert!(newcombe_lower(4, 200, 2, 200, 0.999) < 0.0);
    }
}
