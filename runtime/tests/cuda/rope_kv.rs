//! RoPE with the K/V store (f16 and quantized K/V rows) and the context shift's key rotation,
//! bit for bit against the CPU reference.

use super::*;

#[test]
fn rope_and_kv_store_are_bit_exact() {
    let Some(dev) = device("rope_and_kv_store_are_bit_exact") else {
        return;
    };
    let mut rng = Rng(6);
    for &(hq, hkv, d) in &[
        (4usize, 2usize, 16usize),
        (9, 3, 64),
        (8, 8, 128),
        (2, 1, 256),
    ] {
        for neox in [false, true] {
            let z = AttnShape {
                n_head: hq,
                n_head_kv: hkv,
                head_dim: d,
                block_size: 16,
                n_layer: 2,
                layer: 1,
                n_blocks: 4,
                max_blocks: 4,
            };
            let n_tok = 5;
            let n_ctx = 64;
            let q = rng.vec(n_tok * hq * d, 3.0);
            let k = rng.vec(n_tok * hkv * d, 3.0);
            let v = rng.vec(n_tok * hkv * d, 3.0);
            let cos = rng.vec(n_ctx * d / 2, 1.0);
            let sin = rng.vec(n_ctx * d / 2, 1.0);
            let pos: Vec<i32> = vec![0, 15, 16, 33, 63];
            let block: Vec<i32> = vec![3, 3, 1, 0, 2];
            let o = testing::rope_kv_write(&dev, z, neox, &q, &k, &v, &cos, &sin, &pos, &block)
                .unwrap();
            let tile = z.block_size * d;
            for t in 0..n_tok {
                let p = pos[t] as usize;
                let (c, s) = (
                    &cos[p * d / 2..(p + 1) * d / 2],
                    &sin[p * d / 2..(p + 1) * d / 2],
                );
                for h in 0..hq {
                    let mut x = q[(t * hq + h) * d..(t * hq + h + 1) * d].to_vec();
                    if neox {
                        ops::rope_neox(&mut x, c, s);
                    } else {
                        ops::rope_norm(&mut x, c, s);
                    }
                    for (e, xe) in x.iter().enumerate() {
                        let want = f16::from_f32(*xe).to_f32();
                        let got = o.q[(t * hq + h) * d + e];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "q t={t} h={h} e={e} neox={neox}"
                        );
                    }
                }
                for h in 0..hkv {
                    let mut x = k[(t * hkv + h) * d..(t * hkv + h + 1) * d].to_vec();
                    if neox {
                        ops::rope_neox(&mut x, c, s);
                    } else {
                        ops::rope_norm(&mut x, c, s);
                    }
                    let base = ((block[t] as usize * z.n_layer + z.layer) * hkv + h) * tile
                        + (p % z.block_size) * d;
                    for e in 0..d {
                        assert_eq!(o.kc[base + e], f16_bits(x[e]), "k t={t} h={h} e={e}");
                        assert_eq!(
                            o.vc[base + e],
                            f16_bits(v[(t * hkv + h) * d + e]),
                            "v t={t} h={h} e={e}"
                        );
                    }
                }
            }
        }
    }
}

/// Quantized stores: the device turns q, k and v and quantizes k and v (a warp per 32-element
/// block) to exactly the CPU's bytes (`KvType::store_row` of the turned rows), both types,
/// heads stored as computed (32) and turned (64, 128, 256).
#[test]
fn quantized_rope_kv_write_is_bit_exact() {
    use ember::kv::KvType;
    use ember_kernels::kv::hadamard;
    let Some(dev) = device("quantized_rope_kv_write_is_bit_exact") else {
        return;
    };
    let mut rng = Rng(10);
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        for &(hq, hkv, d) in &[
            (4usize, 2usize, 32usize),
            (9, 3, 64),
            (4, 2, 128),
            (2, 1, 256),
        ] {
            let z = AttnShape {
                n_head: hq,
                n_head_kv: hkv,
                head_dim: d,
                block_size: 16,
                n_layer: 2,
                layer: 1,
                n_blocks: 4,
                max_blocks: 4,
            };
            let n_tok = 5;
            let q = rng.vec(n_tok * hq * d, 2.0);
            let mut k = rng.vec(n_tok * hkv * d, 2.0);
            let mut v = rng.vec(n_tok * hkv * d, 2.0);
            // An all-zero block and a block whose largest element repeats.
            k[..32].fill(0.0);
            v[..32]
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = if i % 7 == 0 { -1.5 } else { 0.25 });
            let cos = rng.vec(64 * d / 2, 1.0);
            let sin = rng.vec(64 * d / 2, 1.0);
            let pos: Vec<i32> = vec![0, 15, 16, 33, 63];
            let block: Vec<i32> = vec![3, 3, 1, 0, 2];
            let o =
                testing::rope_kv_write_of(&dev, z, false, kv, &q, &k, &v, &cos, &sin, &pos, &block)
                    .unwrap();
            let rb = kv.row_bytes(d).unwrap();
            let tile = z.block_size * rb;
            let (rk, rv) = (kv.key_rotation(d), kv.value_rotation(d));
            let bytes = |w: &[u16]| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
            let (kc, vc) = (bytes(&o.kc), bytes(&o.vc));
            for t in 0..n_tok {
                let p = pos[t] as usize;
                let (c, s) = (
                    &cos[p * d / 2..(p + 1) * d / 2],
                    &sin[p * d / 2..(p + 1) * d / 2],
                );
                let mut qt = q[t * hq * d..(t + 1) * hq * d].to_vec();
                let mut kt = k[t * hkv * d..(t + 1) * hkv * d].to_vec();
                let mut vt = v[t * hkv * d..(t + 1) * hkv * d].to_vec();
                qt.chunks_exact_mut(d)
                    .chain(kt.chunks_exact_mut(d))
                    .for_each(|h| ops::rope_norm(h, c, s));
                if let Some(n) = rk {
                    hadamard(&mut qt, n);
                    hadamard(&mut kt, n);
                }
                if let Some(n) = rv {
                    hadamard(&mut vt, n);
                }
                for (e, x) in qt.iter().enumerate() {
                    let want = f16::from_f32(*x).to_f32();
                    assert_eq!(
                        o.q[t * hq * d + e].to_bits(),
                        want.to_bits(),
                        "{kv} d={d} q t={t} e={e}"
                    );
                }
                for h in 0..hkv {
                    let at = ((block[t] as usize * z.n_layer + z.layer) * hkv + h) * tile
                        + (p % z.block_size) * rb;
                    let (mut wk, mut wv) = (vec![0u8; rb], vec![0u8; rb]);
                    kv.store_row(&kt[h * d..(h + 1) * d], &mut wk);
                    kv.store_row(&vt[h * d..(h + 1) * d], &mut wv);
                    assert_eq!(&kc[at..at + rb], &wk[..], "{kv} d={d} k t={t} h={h}");
                    assert_eq!(&vc[at..at + rb], &wv[..], "{kv} d={d} v t={t} h={h}");
                }
            }
        }
    }
}

/// A context shift's key rotation: the device rotates one (block, layer)'s keys exactly as the
/// CPU does (f16 keys widened, RoPE by `-delta` with the same fused multiply-adds, rounded back),
/// bit for bit, both pairings; other blocks and layers are untouched.
#[test]
fn shift_keys_are_bit_exact() {
    let Some(dev) = device("shift_keys_are_bit_exact") else {
        return;
    };
    let mut rng = Rng(8);
    for &(hkv, d) in &[(2usize, 16usize), (3, 64), (8, 128), (1, 256)] {
        for neox in [false, true] {
            let z = AttnShape {
                n_head: hkv,
                n_head_kv: hkv,
                head_dim: d,
                block_size: 16,
                n_layer: 3,
                layer: 1,
                n_blocks: 4,
                max_blocks: 4,
            };
            let n_ctx = 64;
            let tile = z.block_size * d;
            let kc: Vec<u16> = rng
                .vec(z.n_blocks * z.n_layer * hkv * tile, 3.0)
                .into_iter()
                .map(f16_bits)
                .collect();
            let cos = rng.vec(n_ctx * d / 2, 1.0);
            let sin = rng.vec(n_ctx * d / 2, 1.0);
            let (block, delta) = (2, 37);
            let got = testing::shift_keys(&dev, z, neox, &kc, &cos, &sin, block, delta).unwrap();
            let mut want = kc.clone();
            let c = &cos[delta * d / 2..(delta + 1) * d / 2];
            let s: Vec<f32> = sin[delta * d / 2..(delta + 1) * d / 2]
                .iter()
                .map(|x| -x)
                .collect();
            let base = (block * z.n_layer + z.layer) * hkv * tile;
            for key in want[base..base + hkv * tile].chunks_exact_mut(d) {
                let mut x: Vec<f32> = key.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
                if neox {
                    ops::rope_neox(&mut x, c, &s);
                } else {
                    ops::rope_norm(&mut x, c, &s);
                }
                for (k, v) in key.iter_mut().zip(&x) {
                    *k = f16_bits(*v);
                }
            }
            assert_ne!(want, kc, "the rotation changes the keys");
            assert_eq!(got, want, "hkv={hkv} d={d} neox={neox}");
        }
    }
}

/// The same for quantized keys (Q8_0 and Q4_0 rows, stored turned by Walsh-Hadamard blocks as
/// the engine stores them): the device reads each row back, turns it back, rotates it, turns it
/// and quantizes it again exactly as the CPU does, byte for byte.
#[test]
fn quantized_shift_keys_are_bit_exact() {
    use ember::kv::KvType;
    use ember_kernels::kv::hadamard;
    let Some(dev) = device("quantized_shift_keys_are_bit_exact") else {
        return;
    };
    let mut rng = Rng(9);
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        for &(hkv, d) in &[(2usize, 32usize), (3, 64), (2, 128), (1, 256)] {
            let z = AttnShape {
                n_head: hkv,
                n_head_kv: hkv,
                head_dim: d,
                block_size: 16,
                n_layer: 3,
                layer: 1,
                n_blocks: 4,
                max_blocks: 4,
            };
            let rb = kv.row_bytes(d).unwrap();
            let n_rows = z.n_blocks * z.n_layer * hkv * z.block_size;
            let mut bytes = vec![0u8; n_rows * rb];
            for row in bytes.chunks_exact_mut(rb) {
                kv.store_row(&rng.vec(d, 3.0), row);
            }
            let words = |b: &[u8]| -> Vec<u16> {
                b.chunks_exact(2)
                    .map(|w| u16::from_le_bytes([w[0], w[1]]))
                    .collect()
            };
            let kc = words(&bytes);
            let n_ctx = 64;
            let cos = rng.vec(n_ctx * d / 2, 1.0);
            let sin = rng.vec(n_ctx * d / 2, 1.0);
            let (block, delta) = (2, 37);
            let got =
                testing::shift_keys_of(&dev, z, false, kv, &kc, &cos, &sin, block, delta).unwrap();
            let c = &cos[delta * d / 2..(delta + 1) * d / 2];
            let s: Vec<f32> = sin[delta * d / 2..(delta + 1) * d / 2]
                .iter()
                .map(|x| -x)
                .collect();
            let mut want = bytes.clone();
            let tile = z.block_size * rb;
            let base = (block * z.n_layer + z.layer) * hkv * tile;
            let turn = kv.key_rotation(d);
            for key in want[base..base + hkv * tile].chunks_exact_mut(rb) {
                let mut x = vec![0f32; d];
                kv.load_row(key, &mut x);
                turn.inspect(|&n| hadamard(&mut x, n));
                ops::rope_norm(&mut x, c, &s);
                turn.inspect(|&n| hadamard(&mut x, n));
                kv.store_row(&x, key);
            }
            assert_ne!(want, bytes, "the rotation changes the keys");
            assert_eq!(got, words(&want), "{kv} hkv={hkv} d={d}");
        }
    }
}
