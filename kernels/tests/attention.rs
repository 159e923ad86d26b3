//! Every attention kernel of every kernel set this CPU and build can run equals the scalar
//! reference bit for bit, for every KV type (f16 rows and the quantized Q8_0 / Q4_0 rows) and
//! every head size the kernels specialize, over awkward key counts and continued states.

use ember_kernels::dispatch::KernelSet;
use ember_kernels::reference::attention;

mod support;
use support::{Rng, LENGTHS};

/// `n` random K or V rows of `d` elements stored as `ty`.
fn kv_rows(rng: &mut Rng, ty: ember_kernels::kv::KvType, n: usize, d: usize) -> Vec<u8> {
    let rb = ty.row_bytes(d).unwrap();
    let mut bytes = vec![0u8; n * rb];
    for row in bytes.chunks_exact_mut(rb) {
        let x: Vec<f32> = (0..d).map(|_| rng.f()).collect();
        ty.store_row(&x, row);
    }
    bytes
}

/// Head sizes each KV type is tested at: every size the kernels specialize and one they do
/// not (48, f16 only: the quantized types need whole blocks of 32).
fn kv_cases() -> Vec<(ember_kernels::kv::KvType, usize)> {
    use ember_kernels::kv::KvType;
    let mut v = vec![];
    for ty in KvType::ALL {
        for d in [32usize, 48, 64, 128, 256] {
            if ty.row_bytes(d).is_some() {
                v.push((ty, d));
            }
        }
    }
    v
}

/// The fused attention kernel equals the reference step by step: same output bits and the same
/// softmax state, over awkward key counts, continuing from an earlier state, for every KV type
/// and head size it specializes and one it does not.
#[test]
fn attention_rows_equal_the_reference() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        use ember_kernels::kv::KvRows;
        use ember_kernels::reference::attention::OnlineSoftmax;
        use half::f16;
        let mut rng = Rng(0xa77e_0001);
        for (name, fast, _) in ks.attention_variants() {
            for (ty, d) in kv_cases() {
                let rb = ty.row_bytes(d).unwrap();
                for &n in &LENGTHS[..12] {
                    let q: Vec<f32> = (0..d).map(|_| f16::from_f32(rng.f()).to_f32()).collect();
                    let k = kv_rows(&mut rng, ty, n, d);
                    let v = kv_rows(&mut rng, ty, n, d);
                    let (mut sa, mut sb) = (OnlineSoftmax::default(), OnlineSoftmax::default());
                    let (mut oa, mut ob) = (vec![0f32; d], vec![0f32; d]);
                    // Two calls: the second continues the state (a later KV block).
                    let split = n / 2 * rb;
                    for (ks, vs) in [(&k[..split], &v[..split]), (&k[split..], &v[split..])] {
                        let (ks, vs) = (KvRows::new(ty, ks), KvRows::new(ty, vs));
                        fast(&q, ks, vs, 0.125, &mut sa, &mut oa);
                        attention::attend_rows(&q, ks, vs, 0.125, &mut sb, &mut ob);
                        assert_eq!(sa, sb, "{name}: softmax state, {ty}, d {d}, n {n}");
                        assert_eq!(
                            oa.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            ob.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{name}: output, {ty}, d {d}, n {n}"
                        );
                    }
                }
            }
        }
    }
}

/// The grouped attention kernel (query heads sharing a KV head) equals the reference per query,
/// for every KV type.
#[test]
fn attention_groups_equal_the_reference() {
    for ks in KernelSet::available() {
        eprintln!("kernel set {}", ks.path().name());
        use ember_kernels::kv::KvRows;
        use ember_kernels::reference::attention::OnlineSoftmax;
        use half::f16;
        let mut rng = Rng(0xa77e_0002);
        for (name, _, fast) in ks.attention_variants() {
            for (ty, d) in kv_cases() {
                let rb = ty.row_bytes(d).unwrap();
                for g in [1usize, 2, 3, 4, 5, 7, 9] {
                    for &n in &LENGTHS[..10] {
                        let q: Vec<f32> = (0..g * d)
                            .map(|_| f16::from_f32(rng.f()).to_f32())
                            .collect();
                        let k = kv_rows(&mut rng, ty, n, d);
                        let v = kv_rows(&mut rng, ty, n, d);
                        let split = n / 2 * rb;
                        let runs = [(&k[..split], &v[..split]), (&k[split..], &v[split..])]
                            .map(|(k, v)| (KvRows::new(ty, k), KvRows::new(ty, v)));
                        let mut sa = vec![OnlineSoftmax::default(); g];
                        let mut oa = vec![0f32; g * d];
                        for (ks, vs) in runs {
                            fast(&q, ks, vs, 0.125, &mut sa, &mut oa);
                        }
                        for h in 0..g {
                            let (mut sb, mut ob) = (OnlineSoftmax::default(), vec![0f32; d]);
                            let qh = &q[h * d..(h + 1) * d];
                            for (ks, vs) in runs {
                                attention::attend_rows(qh, ks, vs, 0.125, &mut sb, &mut ob);
                            }
                            let what = format!("{name}: {ty}, d {d}, g {g}, n {n}, head {h}");
                            assert_eq!(sa[h], sb, "state, {what}");
                            assert_eq!(
                                oa[h * d..(h + 1) * d]
                                    .iter()
                                    .map(|x| x.to_bits())
                                    .collect::<Vec<_>>(),
                                ob.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                                "output, {what}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A quantized row read back by attention is exactly what `load_row` gives: one key whose
/// weight is 1 returns its value row, so every stored element of every type comes back.
#[test]
fn attention_reads_quantized_rows_exactly() {
    use ember_kernels::kv::{KvRows, KvType};
    use ember_kernels::reference::attention::OnlineSoftmax;
    for ks in KernelSet::available() {
        let mut rng = Rng(0xa77e_0003);
        for (name, fast, _) in ks.attention_variants() {
            for ty in KvType::ALL {
                for d in [32usize, 64, 128, 256] {
                    let k = kv_rows(&mut rng, ty, 1, d);
                    // Values that f16 holds exactly, so the f16 accumulator keeps them.
                    let mut v = vec![0u8; ty.row_bytes(d).unwrap()];
                    let x: Vec<f32> = (0..d).map(|i| (i as f32 - 100.0) / 8.0).collect();
                    ty.store_row(&x, &mut v);
                    let mut want = vec![0f32; d];
                    ty.load_row(&v, &mut want);
                    let q = vec![0.5f32; d];
                    let (mut st, mut out) = (OnlineSoftmax::default(), vec![0f32; d]);
                    fast(
                        &q,
                        KvRows::new(ty, &k),
                        KvRows::new(ty, &v),
                        1.0,
                        &mut st,
                        &mut out,
                    );
                    st.finish(&mut out);
                    let want: Vec<f32> = want
                        .iter()
                        .map(|&x| half::f16::from_f32(x).to_f32())
                        .collect();
                    assert_eq!(out, want, "{name}: {ty}, d {d}");
                }
            }
        }
    }
}

/// The tiled attention kernel of every kernel set equals the reference bit for bit: outputs,
/// running maxima and sums, over several tiles per row (the online softmax continued), rows that
/// see all, part or none of a tile, head sizes the kernels vectorize and one they do not,
/// scores wide enough that the exponential leaves its fast range, and row counts that are not a
/// multiple of the kernels' register blocks.
#[test]
fn tiled_attention_equals_the_reference() {
    use ember_kernels::reference::attention::OnlineSoftmax;
    use ember_kernels::reference::attention_tiled::{attend_tile, KvTile, TILE};
    let mut rng = Rng(0xa77e_71ed);
    for ks in KernelSet::available() {
        let fast = ks.ops().attend_tile;
        // 48: a 16-lane tail after the AVX-512 kernel's 32-lane blocks of values.
        for d in [8usize, 20, 48, 64, 72, 256] {
            // 9 and 13: a partial block after 8 (AVX-512) or 6 (AVX2) rows.
            for rows in [1usize, 5, 6, 7, 9, 13, 64] {
                for wide in [1.0f32, 40.0] {
                    let q: Vec<f32> = (0..rows * d).map(|_| rng.f() * wide).collect();
                    let (mut sa, mut sb) = (vec![OnlineSoftmax::default(); rows], vec![]);
                    sb.clone_from(&sa);
                    let (mut oa, mut ob) = (vec![0f32; rows * d], vec![0f32; rows * d]);
                    let (mut pa, mut pb) = (vec![0f32; rows * TILE], vec![0f32; rows * TILE]);
                    for tile in 0..3 {
                        let kt: Vec<f32> = (0..d * TILE).map(|_| rng.f()).collect();
                        let v: Vec<f32> = (0..TILE * d).map(|_| rng.f()).collect();
                        let kv = KvTile { kt: &kt, v: &v };
                        let spans: Vec<(u8, u8)> = (0..rows)
                            .map(|r| match (r + tile) % 5 {
                                0 => (0, 64),
                                1 => (0, (r * 7 % 64) as u8),
                                2 => ((r * 3 % 64) as u8, 64),
                                3 => (9, 9),
                                _ => (17, 40),
                            })
                            .collect();
                        let scale = 0.125;
                        attend_tile(&q, kv, &spans, scale, &mut sa, &mut oa, &mut pa);
                        fast(&q, kv, &spans, scale, &mut sb, &mut ob, &mut pb);
                        let ctx = format!(
                            "{} d {d} rows {rows} wide {wide} tile {tile}",
                            ks.path().name()
                        );
                        assert_eq!(sa, sb, "{ctx}: softmax states");
                        let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&oa), bits(&ob), "{ctx}: outputs");
                    }
                    assert!(sa.iter().any(|s| s.sum > 0.0), "some row saw keys");
                }
            }
        }
    }
}

/// Every kernel set's tile loader reads f16 (and quantized) rows exactly as the reference does,
/// at any offset in the tile, transposing the keys.
#[test]
fn tile_loads_equal_the_reference() {
    use ember_kernels::kv::KvRows;
    use ember_kernels::reference::attention_tiled::{load_tile, TILE};
    let mut rng = Rng(0x10ad_711e);
    for ks in KernelSet::available() {
        for (ty, d) in kv_cases() {
            for (at, n) in [(0usize, 64usize), (5, 11), (48, 16), (63, 1)] {
                let k = kv_rows(&mut rng, ty, n, d);
                let v = kv_rows(&mut rng, ty, n, d);
                let (k, v) = (KvRows::new(ty, &k), KvRows::new(ty, &v));
                let (mut kta, mut vta) = (vec![7f32; d * TILE], vec![7f32; TILE * d]);
                let (mut ktb, mut vtb) = (kta.clone(), vta.clone());
                load_tile(k, v, at, &mut kta, &mut vta);
                (ks.ops().load_tile)(k, v, at, &mut ktb, &mut vtb);
                let ctx = format!("{} {ty} d {d} at {at} n {n}", ks.path().name());
                assert_eq!(kta, ktb, "{ctx}: keys");
                assert_eq!(vta, vtb, "{ctx}: values");
                let mut row = vec![0f32; d];
                k.load(n - 1, d, &mut row);
                assert_eq!(
                    kta[(d - 1) * TILE + at + n - 1],
                    row[d - 1],
                    "{ctx}: transposed"
                );
            }
        }
    }
}
