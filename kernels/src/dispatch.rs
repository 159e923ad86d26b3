//! Run-time kernel selection: a [`KernelSet`] is one path's kernels as a value, detected from
//! the CPU (or built for a named path); the runtime holds one and calls only its tables.
//!
//! `EMBER_CPU=scalar|avx2|avx2-novnni|avx512|neon` forces the path [`KernelSet::detect`]
//! picks (for measurements); asking for a path the CPU (or this build) lacks is an error, never
//! a silent fallback. Tests build every available set with [`KernelSet::available`] instead.
//! Without the variable the best available path is used. The scalar reference is always
//! available.
//!
//! On aarch64, `neon` selects NEON with the dotprod extension (`sdot`) where the CPU has it and
//! plain NEON otherwise; `neon-dotprod` requires the extension, and `neon-nodot` forces the plain
//! NEON kernels even on a CPU with it (to test and measure that path on such a machine).
//! Likewise on x86_64: `avx2` takes AVX-VNNI's lane sums in the tiles where the CPU has them,
//! `avx2-novnni` the plain AVX2 ones an AVX2-only CPU runs.

use std::sync::OnceLock;

use crate::reference::{attention, attention_tiled, ops};
use crate::tile::TileDotFn;
#[cfg(all(feature = "simd", target_arch = "aarch64"))]
use crate::traits::VecDotFn;
use crate::traits::{reference_traits, TypeTraits};
use crate::GgmlType;

/// A kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPath {
    /// The scalar reference (the spec).
    Scalar,
    /// x86_64 with AVX2, FMA and F16C (x86-64-v3); the tiles take AVX-VNNI's `vpdpbusd`
    /// where the CPU has it (the same sums in one instruction).
    Avx2,
    /// The AVX2 path without AVX-VNNI, even on a CPU that has it: the kernels of an AVX2-only
    /// CPU (AMD Zen 2 and 3, Intel before Alder Lake), to test and measure them on a newer one.
    Avx2NoVnni,
    /// The AVX2 path plus AVX-512 (F, BW, VL, DQ, VNNI) tile products: the same results bit for
    /// bit, with two (row, token) pairs per 512-bit register in prefill and batched decode.
    Avx512,
    /// aarch64 NEON without the dotprod extension (`vmull_s8` integer dots).
    Neon,
    /// aarch64 NEON with the dotprod extension (`sdot` integer dots).
    NeonDotprod,
}

impl CpuPath {
    /// Name as accepted by `EMBER_CPU`.
    pub fn name(self) -> &'static str {
        match self {
            CpuPath::Scalar => "scalar",
            CpuPath::Avx2 => "avx2",
            CpuPath::Avx2NoVnni => "avx2-novnni",
            CpuPath::Avx512 => "avx512",
            CpuPath::Neon => "neon-nodot",
            CpuPath::NeonDotprod => "neon-dotprod",
        }
    }
}

/// The f32 operations of the forward pass.
#[derive(Debug)]
pub struct Ops {
    /// See [`ops::rms_norm`].
    pub rms_norm: fn(&[f32], &[f32], f32, &mut [f32]),
    /// See [`ops::silu_mul`].
    pub silu_mul: fn(&mut [f32], &[f32]),
    /// See [`ops::geglu`] (`table`: [`ops::GELU_TABLE_LEN`] entries for the SIMD kernels).
    pub geglu: fn(&mut [f32], &[f32], &[u16]),
    /// See [`ops::rope_norm`].
    pub rope_norm: fn(&mut [f32], &[f32], &[f32]),
    /// See [`ops::rope_neox`].
    pub rope_neox: fn(&mut [f32], &[f32], &[f32]),
    /// See [`attention::dot_f16_order`].
    pub dot_f16: fn(&[f32], &[f32]) -> f32,
    /// See [`attention::scale_f16`].
    pub scale_f16: fn(&mut [f32], f32),
    /// See [`attention::mad_f16`].
    pub mad_f16: fn(&mut [f32], &[f32], f32),
    /// See [`attention::attend_rows`].
    pub attend_rows: AttendRowsFn,
    /// See [`attention::attend_rows_group`].
    pub attend_rows_group: AttendGroupFn,
    /// See [`attention_tiled::attend_tile`].
    pub attend_tile: AttendTileFn,
    /// See [`attention_tiled::load_tile`].
    pub load_tile: LoadTileFn,
}

/// Signature of [`attention_tiled::load_tile`].
pub type LoadTileFn =
    fn(crate::kv::KvRows<'_>, crate::kv::KvRows<'_>, usize, &mut [f32], &mut [f32]);

/// Signature of [`attention_tiled::attend_tile`].
pub type AttendTileFn = fn(
    &[f32],
    attention_tiled::KvTile<'_>,
    &[(u8, u8)],
    f32,
    &mut [attention::OnlineSoftmax],
    &mut [f32],
    &mut [f32],
);

/// Signature of [`attention::attend_rows_group`].
pub type AttendGroupFn = fn(
    &[f32],
    crate::kv::KvRows<'_>,
    crate::kv::KvRows<'_>,
    f32,
    &mut [attention::OnlineSoftmax],
    &mut [f32],
);

/// Signature of [`attention::attend_rows`].
pub type AttendRowsFn = fn(
    &[f32],
    crate::kv::KvRows<'_>,
    crate::kv::KvRows<'_>,
    f32,
    &mut attention::OnlineSoftmax,
    &mut [f32],
);

static SCALAR_OPS: Ops = Ops {
    rms_norm: ops::rms_norm,
    silu_mul: ops::silu_mul,
    geglu: ops::geglu,
    rope_norm: ops::rope_norm,
    rope_neox: ops::rope_neox,
    dot_f16: attention::dot_f16_order,
    scale_f16: attention::scale_f16,
    mad_f16: attention::mad_f16,
    attend_rows: attention::attend_rows,
    attend_rows_group: attention::attend_rows_group,
    attend_tile: attention_tiled::attend_tile,
    load_tile: attention_tiled::load_tile,
};

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod avx2_tables {
    use super::*;
    use crate::traits::BatchRows;
    use crate::x86_64::{
        attention as x86_attention, dots, float, kquants, q4_0, q5_0, quantize, v3,
    };

    pub static OPS: Ops = Ops {
        rms_norm: v3::rms_norm,
        silu_mul: v3::silu_mul,
        geglu: v3::geglu,
        rope_norm: v3::rope_norm,
        rope_neox: v3::rope_neox,
        dot_f16: v3::dot_f16_order,
        scale_f16: v3::scale_f16,
        mad_f16: v3::mad_f16,
        attend_rows: x86_attention::attend_rows,
        attend_rows_group: x86_attention::attend_rows_group,
        attend_tile: crate::x86_64::attention_tiled::attend_tile,
        load_tile: crate::x86_64::attention_tiled::load_tile,
    };

    /// The AVX2 operations with the AVX-512 attention kernels.
    pub static OPS512: Ops = Ops {
        attend_rows: crate::x86_64::attention512::attend_rows,
        attend_rows_group: crate::x86_64::attention512::attend_rows_group,
        attend_tile: crate::x86_64::attention_tiled512::attend_tile,
        load_tile: crate::x86_64::attention_tiled512::load_tile,
        ..OPS
    };

    fn with(base: &'static TypeTraits, f: impl FnOnce(&mut TypeTraits)) -> TypeTraits {
        let mut t = TypeTraits { ..*base };
        f(&mut t);
        t
    }

    /// Every tile kernel of `ty` this CPU can run on `path`, best first, with a name: the
    /// AVX-512 ones only on the AVX-512 path, the AVX-VNNI ones not on `avx2-novnni`.
    pub fn tile_variants(ty: GgmlType, path: CpuPath) -> Vec<(&'static str, TileDotFn)> {
        use crate::x86_64::{tiles, tiles512, tiles512_k, tiles_k};
        let avx512 = path == CpuPath::Avx512;
        let vnni = path != CpuPath::Avx2NoVnni && std::arch::is_x86_feature_detected!("avxvnni");
        let wide: &[(GgmlType, &'static str, TileDotFn)] = &[
            (
                GgmlType::Q4_1,
                "avx512-vnni",
                tiles512::tile::<tiles512::Q4_1>,
            ),
            (
                GgmlType::Q8_0,
                "avx512-vnni",
                tiles512::tile::<tiles512::Q8_0>,
            ),
            (
                GgmlType::Q5_0,
                "avx512-vnni",
                tiles512::tile::<tiles512::Q5_0>,
            ),
            (
                GgmlType::Q4_K,
                "avx512-vnni",
                tiles512_k::tile::<tiles512_k::Q4K>,
            ),
            (
                GgmlType::Q6_K,
                "avx512-vnni",
                tiles512_k::tile::<tiles512_k::Q6K>,
            ),
        ];
        let wide = wide
            .iter()
            .filter(|e| avx512 && e.0 == ty)
            .map(|e| (e.1, e.2));
        let all: &[(GgmlType, bool, &'static str, TileDotFn)] = &[
            (
                GgmlType::Q4_1,
                true,
                "avx-vnni",
                tiles::tile::<3, tiles::VnniQ4_1>,
            ),
            (
                GgmlType::Q4_1,
                false,
                "avx2",
                tiles::tile::<3, tiles::Avx2Q4_1>,
            ),
            (
                GgmlType::Q8_0,
                true,
                "avx-vnni",
                tiles::tile::<2, tiles::VnniQ8_0>,
            ),
            (
                GgmlType::Q8_0,
                false,
                "avx2",
                tiles::tile::<2, tiles::Avx2Q8_0>,
            ),
            (
                GgmlType::Q5_0,
                true,
                "avx-vnni",
                tiles::tile::<2, tiles::VnniQ5_0>,
            ),
            (
                GgmlType::Q5_0,
                false,
                "avx2",
                tiles::tile::<2, tiles::Avx2Q5_0>,
            ),
            (GgmlType::Q4_K, false, "avx2", tiles_k::tile::<tiles_k::Q4K>),
            (GgmlType::Q6_K, false, "avx2", tiles_k::tile::<tiles_k::Q6K>),
        ];
        wide.chain(
            all.iter()
                .filter(|e| e.0 == ty && (vnni || !e.1))
                .map(|e| (e.2, e.3)),
        )
        .collect()
    }

    pub fn tile(ty: GgmlType, path: CpuPath) -> Option<TileDotFn> {
        type Table = Vec<(GgmlType, TileDotFn)>;
        static TABLES: [OnceLock<Table>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match path {
            CpuPath::Avx512 => 0,
            CpuPath::Avx2NoVnni => 1,
            _ => 2,
        };
        TABLES[slot]
            .get_or_init(|| {
                crate::SUPPORTED
                    .iter()
                    .filter_map(|&t| tile_variants(t, path).first().map(|v| (t, v.1)))
                    .collect()
            })
            .iter()
            .find(|e| e.0 == ty)
            .map(|e| e.1)
    }

    pub fn traits(ty: GgmlType) -> Option<&'static TypeTraits> {
        static TABLE: OnceLock<[TypeTraits; 13]> = OnceLock::new();
        let t = TABLE.get_or_init(|| {
            let r = |ty| reference_traits(ty).expect("reference entry");
            [
                with(r(GgmlType::F32), |t| t.vec_dot = float::vec_dot_f32),
                with(r(GgmlType::F16), |t| {
                    t.vec_dot = float::vec_dot_f16;
                    t.quantize_act = Some(quantize::quantize_row_f16);
                }),
                with(r(GgmlType::BF16), |t| {
                    t.vec_dot = float::vec_dot_bf16;
                    t.quantize_act = Some(quantize::quantize_row_bf16);
                }),
                with(r(GgmlType::Q4_0), |t| t.vec_dot = q4_0::vec_dot_q4_0_q8_0),
                with(r(GgmlType::Q4_1), |t| t.vec_dot = dots::vec_dot_q4_1_q8_1),
                with(r(GgmlType::Q8_0), |t| {
                    t.vec_dot = dots::vec_dot_q8_0_q8_0;
                    t.quantize_act = Some(quantize::quantize_row_q8_0_act);
                }),
                with(r(GgmlType::Q8_1), |t| {
                    t.quantize_act = Some(quantize::quantize_row_q8_1_act)
                }),
                with(r(GgmlType::Q5_0), |t| t.vec_dot = q5_0::vec_dot_q5_0_q8_0),
                with(r(GgmlType::Q5_1), |t| t.vec_dot = v3::vec_dot_q5_1_q8_1),
                with(r(GgmlType::Q4_K), |t| {
                    t.vec_dot = kquants::vec_dot_q4_k_q8_k;
                    t.vec_dot_batched = Some((BatchRows::FullQuads, kquants::vec_dot_q4_k_q8_k_x4));
                }),
                with(r(GgmlType::Q5_K), |t| {
                    t.vec_dot = kquants::vec_dot_q5_k_q8_k
                }),
                with(r(GgmlType::Q6_K), |t| {
                    t.vec_dot = kquants::vec_dot_q6_k_q8_k;
                    t.vec_dot_batched =
                        Some((BatchRows::AllFrom(8), kquants::vec_dot_q6_k_q8_k_tiled));
                }),
                with(r(GgmlType::Q8_K), |t| {
                    t.quantize_act = Some(quantize::quantize_row_q8_k)
                }),
            ]
        });
        t.iter()
            .find(|e| e.ty == ty)
            .or_else(|| reference_traits(ty))
    }
}

#[cfg(all(feature = "simd", target_arch = "aarch64"))]
mod neon_tables {
    use super::*;
    use crate::aarch64::{
        attention as att, float, kquants, ops as nops, q4_0, q4_1, q5_k, q8_0, quantize,
    };
    use crate::traits::BatchRows;

    pub static OPS: Ops = Ops {
        rms_norm: nops::rms_norm,
        silu_mul: nops::silu_mul,
        geglu: ops::geglu,
        rope_norm: nops::rope_norm,
        rope_neox: nops::rope_neox,
        dot_f16: att::dot_f16_order,
        scale_f16: att::scale_f16,
        mad_f16: att::mad_f16,
        attend_rows: att::attend_rows,
        attend_rows_group: att::attend_rows_group,
        attend_tile: crate::aarch64::attention_tiled::attend_tile,
        load_tile: crate::aarch64::attention_tiled::load_tile,
    };

    fn with(base: &'static TypeTraits, f: impl FnOnce(&mut TypeTraits)) -> TypeTraits {
        let mut t = TypeTraits { ..*base };
        f(&mut t);
        t
    }

    /// The NEON entries; `dotprod` picks the `sdot` dots over the plain NEON ones.
    fn table(dotprod: bool) -> [TypeTraits; 10] {
        let r = |ty| reference_traits(ty).expect("reference entry");
        let pick = |dot: VecDotFn, plain: VecDotFn| if dotprod { dot } else { plain };
        [
            with(r(GgmlType::Q4_0), |t| {
                t.vec_dot = pick(q4_0::vec_dot_q4_0_q8_0_dotprod, q4_0::vec_dot_q4_0_q8_0)
            }),
            with(r(GgmlType::Q4_1), |t| {
                t.vec_dot = pick(q4_1::vec_dot_q4_1_q8_1_dotprod, q4_1::vec_dot_q4_1_q8_1)
            }),
            with(r(GgmlType::Q8_0), |t| {
                t.vec_dot = pick(q8_0::vec_dot_q8_0_q8_0_dotprod, q8_0::vec_dot_q8_0_q8_0);
                t.quantize_act = Some(quantize::quantize_row_q8_0_act);
            }),
            with(r(GgmlType::Q8_1), |t| {
                t.quantize_act = Some(quantize::quantize_row_q8_1_act)
            }),
            with(r(GgmlType::Q4_K), |t| {
                t.vec_dot = pick(kquants::vec_dot_q4_k_q8k_dotprod, kquants::vec_dot_q4_k_q8k);
                t.vec_dot_batched = Some((
                    BatchRows::FullQuads,
                    pick(
                        kquants::vec_dot_q4_k_q8k_x4_dotprod,
                        kquants::vec_dot_q4_k_q8k_x4,
                    ),
                ));
            }),
            with(r(GgmlType::Q5_K), |t| t.vec_dot = q5_k::vec_dot_q5_k_q8_k),
            with(r(GgmlType::Q6_K), |t| {
                t.vec_dot = pick(kquants::vec_dot_q6_k_q8k_dotprod, kquants::vec_dot_q6_k_q8k);
                t.vec_dot_batched = Some((
                    BatchRows::AllFrom(8),
                    pick(
                        kquants::vec_dot_q6_k_q8k_tiled_dotprod,
                        kquants::vec_dot_q6_k_q8k_tiled,
                    ),
                ));
            }),
            with(r(GgmlType::F32), |t| t.vec_dot = float::vec_dot_f32),
            with(r(GgmlType::F16), |t| t.vec_dot = float::vec_dot_f16),
            with(r(GgmlType::BF16), |t| t.vec_dot = float::vec_dot_bf16),
        ]
    }

    pub fn traits(ty: GgmlType, dotprod: bool) -> Option<&'static TypeTraits> {
        static DOT: OnceLock<[TypeTraits; 10]> = OnceLock::new();
        static PLAIN: OnceLock<[TypeTraits; 10]> = OnceLock::new();
        let t = if dotprod {
            DOT.get_or_init(|| table(true))
        } else {
            PLAIN.get_or_init(|| table(false))
        };
        t.iter()
            .find(|e| e.ty == ty)
            .or_else(|| reference_traits(ty))
    }
}

fn detect(requested: Option<&str>) -> Result<CpuPath, String> {
    let (avx2, avx512) = {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            (avx2, avx2 && crate::x86_64::tiles512::available())
        }
        #[cfg(not(all(feature = "simd", target_arch = "x86_64")))]
        {
            (false, false)
        }
    };
    // (neon, dotprod): the NEON kernels need Advanced SIMD; the `sdot` dots also dotprod.
    let (neon, dotprod) = {
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        {
            let neon = std::arch::is_aarch64_feature_detected!("neon");
            (
                neon,
                neon && std::arch::is_aarch64_feature_detected!("dotprod"),
            )
        }
        #[cfg(not(all(feature = "simd", target_arch = "aarch64")))]
        {
            (false, false)
        }
    };
    let best_neon = if dotprod {
        Some(CpuPath::NeonDotprod)
    } else if neon {
        Some(CpuPath::Neon)
    } else {
        None
    };
    let lacks_neon = |what: &str| {
        format!("EMBER_CPU={what}: this CPU (or this build: feature `simd`, aarch64) lacks NEON")
    };
    match requested {
        None | Some("") => Ok(if avx512 {
            CpuPath::Avx512
        } else if avx2 {
            CpuPath::Avx2
        } else {
            best_neon.unwrap_or(CpuPath::Scalar)
        }),
        Some("scalar") => Ok(CpuPath::Scalar),
        Some("avx2") if avx2 => Ok(CpuPath::Avx2),
        Some("avx2-novnni") if avx2 => Ok(CpuPath::Avx2NoVnni),
        Some(what @ ("avx2" | "avx2-novnni")) => Err(format!(
            "EMBER_CPU={what}: this CPU (or this build: feature `simd`, x86_64) lacks AVX2/FMA/F16C"
        )),
        Some("avx512") if avx512 => Ok(CpuPath::Avx512),
        Some("avx512") => Err(
            "EMBER_CPU=avx512: this CPU (or this build: feature `simd`, x86_64) lacks one of \
             AVX-512 F/BW/VL/DQ/VNNI (EMBER_CPU=avx2 runs the AVX2 path)"
                .into(),
        ),
        Some("neon") => best_neon.ok_or_else(|| lacks_neon("neon")),
        Some("neon-nodot") if neon => Ok(CpuPath::Neon),
        Some("neon-nodot") => Err(lacks_neon("neon-nodot")),
        Some("neon-dotprod") if dotprod => Ok(CpuPath::NeonDotprod),
        Some("neon-dotprod") => Err(
            "EMBER_CPU=neon-dotprod: this CPU (or this build: feature `simd`, aarch64) lacks \
             NEON with the dotprod extension (EMBER_CPU=neon-nodot runs plain NEON)"
                .into(),
        ),
        Some(other) => Err(format!(
            "EMBER_CPU={other:?} is not a kernel path (scalar, avx2, avx2-novnni, avx512, \
             neon, neon-dotprod, neon-nodot)"
        )),
    }
}

static SELECTED: OnceLock<Result<CpuPath, String>> = OnceLock::new();

/// The kernel path chosen from the CPU and `EMBER_CPU` (once per process). An error names what
/// was asked and what is missing; callers report it at start-up.
pub fn select() -> Result<CpuPath, String> {
    SELECTED
        .get_or_init(|| detect(std::env::var("EMBER_CPU").ok().as_deref()))
        .clone()
}

/// One kernel path's kernels, as a value: the f32 operations, each weight type's table
/// (dequantize, quantize-activations, dot) and tile products. Whoever computes holds one (the
/// runtime's worker threads do), so tests can run every path this CPU has in one process, and
/// a hot loop reads its kernels from the value it was given instead of a global.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    path: CpuPath,
    ops: &'static Ops,
}

impl PartialEq for KernelSet {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for KernelSet {}

impl KernelSet {
    /// The best path this CPU and build can run, or the one `EMBER_CPU` names (an error when
    /// the CPU or build lacks it: never a silent fallback).
    pub fn detect() -> Result<KernelSet, String> {
        select().map(KernelSet::of)
    }

    /// The scalar reference (the spec), available everywhere.
    pub fn reference() -> KernelSet {
        KernelSet::of(CpuPath::Scalar)
    }

    /// Path `path`, if this CPU and build can run it.
    pub fn for_path(path: CpuPath) -> Result<KernelSet, String> {
        detect(Some(path.name())).map(KernelSet::of)
    }

    /// Every path this CPU and build can run, the reference first.
    pub fn available() -> Vec<KernelSet> {
        [
            CpuPath::Scalar,
            CpuPath::Avx2,
            CpuPath::Avx2NoVnni,
            CpuPath::Avx512,
            CpuPath::Neon,
            CpuPath::NeonDotprod,
        ]
        .into_iter()
        .filter_map(|p| KernelSet::for_path(p).ok())
        .collect()
    }

    fn of(path: CpuPath) -> KernelSet {
        KernelSet {
            path,
            ops: path_ops(path),
        }
    }

    /// The path.
    pub fn path(self) -> CpuPath {
        self.path
    }

    /// The f32 operations.
    pub fn ops(self) -> &'static Ops {
        self.ops
    }

    /// The kernel table of `ty`; `None` for types Ember cannot compute with.
    pub fn traits(self, ty: GgmlType) -> Option<&'static TypeTraits> {
        path_traits(self.path, ty)
    }

    /// The tile product of weight type `ty` (see [`crate::tile`]); `None` where the path has
    /// none for `ty` (callers then use `traits(ty).vec_dot` per pair).
    pub fn tile(self, ty: GgmlType) -> Option<TileDotFn> {
        path_tile(self.path, ty)
    }

    /// Every tile kernel of `ty` on this path that this CPU can run (the first is what
    /// [`KernelSet::tile`] returns), named; for tests and benchmarks of each variant.
    pub fn tile_variants(self, ty: GgmlType) -> Vec<(&'static str, TileDotFn)> {
        path_tile_variants(self.path, ty)
    }

    /// Every attention kernel pair (`attend_rows`, `attend_rows_group`) on this path that this
    /// CPU can run, named, this set's own ([`KernelSet::ops`]) first.
    pub fn attention_variants(self) -> Vec<(&'static str, AttendRowsFn, AttendGroupFn)> {
        let own = self.ops;
        #[cfg_attr(not(all(feature = "simd", target_arch = "x86_64")), allow(unused_mut))]
        let mut v = vec![(self.path.name(), own.attend_rows, own.attend_rows_group)];
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if self.path == CpuPath::Avx512 {
            let o = &avx2_tables::OPS;
            v.push(("avx2", o.attend_rows, o.attend_rows_group));
        }
        v
    }
}

fn path_traits(path: CpuPath, ty: GgmlType) -> Option<&'static TypeTraits> {
    match path {
        CpuPath::Scalar => reference_traits(ty),
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => avx2_tables::traits(ty),
        #[cfg(not(all(feature = "simd", target_arch = "x86_64")))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => reference_traits(ty),
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::Neon => neon_tables::traits(ty, false),
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::NeonDotprod => neon_tables::traits(ty, true),
        #[cfg(not(all(feature = "simd", target_arch = "aarch64")))]
        CpuPath::Neon | CpuPath::NeonDotprod => reference_traits(ty),
    }
}

#[cfg_attr(
    not(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64"))),
    allow(unused_variables)
)]
fn path_tile(path: CpuPath, ty: GgmlType) -> Option<TileDotFn> {
    match path {
        CpuPath::Scalar => None,
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => avx2_tables::tile(ty, path),
        #[cfg(not(all(feature = "simd", target_arch = "x86_64")))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => None,
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::Neon => crate::aarch64::tiles::best(ty, false),
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::NeonDotprod => crate::aarch64::tiles::best(ty, true),
        #[cfg(not(all(feature = "simd", target_arch = "aarch64")))]
        CpuPath::Neon | CpuPath::NeonDotprod => None,
    }
}

#[cfg_attr(
    not(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64"))),
    allow(unused_variables)
)]
fn path_tile_variants(path: CpuPath, ty: GgmlType) -> Vec<(&'static str, TileDotFn)> {
    match path {
        CpuPath::Scalar => Vec::new(),
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => {
            avx2_tables::tile_variants(ty, path)
        }
        #[cfg(not(all(feature = "simd", target_arch = "x86_64")))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => Vec::new(),
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::Neon => crate::aarch64::tiles::variants(ty, false),
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::NeonDotprod => crate::aarch64::tiles::variants(ty, true),
        #[cfg(not(all(feature = "simd", target_arch = "aarch64")))]
        CpuPath::Neon | CpuPath::NeonDotprod => Vec::new(),
    }
}

fn path_ops(path: CpuPath) -> &'static Ops {
    match path {
        CpuPath::Scalar => &SCALAR_OPS,
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni => &avx2_tables::OPS,
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        CpuPath::Avx512 => &avx2_tables::OPS512,
        #[cfg(not(all(feature = "simd", target_arch = "x86_64")))]
        CpuPath::Avx2 | CpuPath::Avx2NoVnni | CpuPath::Avx512 => &SCALAR_OPS,
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        CpuPath::Neon | CpuPath::NeonDotprod => &neon_tables::OPS,
        #[cfg(not(all(feature = "simd", target_arch = "aarch64")))]
        CpuPath::Neon | CpuPath::NeonDotprod => &SCALAR_OPS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        assert_eq!(detect(Some("scalar")), Ok(CpuPath::Scalar));
        // The two AVX2 paths stand or fall together (only the tiles' lane sums differ).
        assert_eq!(
            detect(Some("avx2")).is_ok(),
            detect(Some("avx2-novnni")).is_ok()
        );
        if let Ok(p) = detect(Some("avx2-novnni")) {
            assert_eq!(p, CpuPath::Avx2NoVnni);
        }
        assert!(detect(Some("mips"))
            .unwrap_err()
            .contains("not a kernel path"));
        let neon_build = cfg!(all(feature = "simd", target_arch = "aarch64"));
        for neon in ["neon", "neon-nodot", "neon-dotprod"] {
            match detect(Some(neon)) {
                Ok(p) => {
                    assert!(neon_build, "{neon} accepted outside an aarch64 simd build");
                    assert!(matches!(p, CpuPath::Neon | CpuPath::NeonDotprod));
                    // Every path's name is accepted by EMBER_CPU and selects that path.
                    assert_eq!(detect(Some(p.name())), Ok(p));
                }
                Err(e) => assert!(e.contains("lacks"), "{neon}: {e}"),
            }
        }
        if neon_build {
            // Every aarch64 CPU Linux runs on has Advanced SIMD.
            assert_eq!(detect(Some("neon-nodot")), Ok(CpuPath::Neon));
        } else {
            assert!(detect(Some("neon")).is_err());
        }
    }
}
