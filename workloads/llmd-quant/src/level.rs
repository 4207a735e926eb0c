//! SIMD levels: which kernels exist, which this CPU can run (run-time detection), the default.

use std::sync::OnceLock;

/// A family of matmul kernels. Every level computes the same integer block dot products on
/// the same quantized activations; they differ only in float summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable Rust; the reference the others are tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (`maddubs`/`madd` integer dots, as ggml).
    Avx2,
    /// AVX2 plus AVX-VNNI (`vpdpbusd` on 256-bit vectors): Intel client / E-core CPUs that
    /// lack AVX-512.
    AvxVnni,
    /// AVX-512 F/BW/VL + VNNI (`vpdpbusd` on 512-bit vectors, two blocks per instruction).
    Avx512Vnni,
}

impl SimdLevel {
    /// Every level, slowest first.
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::AvxVnni,
        SimdLevel::Avx512Vnni,
    ];

    /// The fastest level this CPU runs, detected once and cached.
    pub fn detect() -> SimdLevel {
        static BEST: OnceLock<SimdLevel> = OnceLock::new();
        *BEST.get_or_init(|| {
            // AVX-VNNI is preferred to AVX-512 only where AVX-512 is missing: 512-bit
            // vectors do two blocks per instruction.
            const PREFERENCE: [SimdLevel; 4] = [
                SimdLevel::Avx512Vnni,
                SimdLevel::AvxVnni,
                SimdLevel::Avx2,
                SimdLevel::Scalar,
            ];
            PREFERENCE
                .into_iter()
                .find(|l| l.is_available())
                .unwrap_or(SimdLevel::Scalar)
        })
    }

    /// The levels this CPU runs, slowest first (always starts with `Scalar`).
    pub fn available() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// Whether this CPU has every feature the level's kernels use.
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => crate::x86::Avx2::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::AvxVnni => crate::x86::AvxVnni::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => crate::x86::Avx512::new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::AvxVnni => "avx-vnni",
            SimdLevel::Avx512Vnni => "avx512-vnni",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
