//! Rust-side tests of the boundary: the panic guard, poisoning, and the calls on a tiny
//! synthetic model. The C test program (`tests/c/`) covers the ABI from C.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use crate::error::{guard, Failure};
use crate::*;

fn last_error() -> String {
    // SAFETY: ember_last_error returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(ember_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn synth_model() -> (tempdir::Dir, CString) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("synth.gguf");
    let w = ember::synth::synth_gguf(&ember::synth::SynthSpec::default()).unwrap();
    w.write_to(&path).unwrap();
    let c = CString::new(path.to_str().unwrap()).unwrap();
    (dir, c)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "ember-ffi-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn small_config() -> ember_config {
    ember_config {
        threads: 1,
        kv_blocks: 64,
        max_requests: 8,
        max_seqs: 4,
        ..ember_config_default()
    }
}

fn new_runtime(path: &CString) -> *mut ember_runtime {
    let mut rt = ptr::null_mut();
    let cfg = small_config();
    // SAFETY: valid path, config and out-pointer.
    let r = unsafe { ember_runtime_new(path.as_ptr(), &cfg, &mut rt) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    rt
}

#[test]
fn version_is_semver() {
    assert_eq!(super::version().split('.').count(), 3);
    // SAFETY: static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(ember_version()) };
    assert_eq!(v.to_str().unwrap(), super::version());
}

#[test]
fn result_names_are_distinct_and_unknown_codes_are_named() {
    let mut names = std::collections::HashSet::new();
    for (i, c) in crate::error::ALL_RESULTS.iter().enumerate() {
        assert_eq!(*c as u32, i as u32, "codes are dense and in order");
        // SAFETY: static NUL-terminated string.
        let n = unsafe { CStr::from_ptr(ember_result_str(*c as u32)) };
        assert!(names.insert(n.to_str().unwrap().to_string()));
    }
    // SAFETY: static NUL-terminated string.
    let n = unsafe { CStr::from_ptr(ember_result_str(9999)) };
    assert_eq!(n.to_str().unwrap(), "unknown ember_result code");
}

#[test]
fn a_panic_becomes_internal_and_sets_the_message() {
    let r = guard(|| panic!("boom {}", 7));
    assert_eq!(r, ember_result::EMBER_ERR_INTERNAL);
    assert!(last_error().contains("boom 7"), "{}", last_error());
    let r = guard(|| Err(Failure::invalid("bad thing")));
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);
    assert_eq!(last_error(), "bad thing");
}

#[test]
fn a_panic_holding_the_engine_poisons_the_runtime() {
    let (_dir, path) = synth_model();
    let rt = new_runtime(&path);
    // SAFETY: `rt` is live.
    let inner = unsafe { &(*rt) }.inner_for_tests();
    let r = guard(|| {
        inner.panic_holding_core();
        Ok(())
    });
    assert_eq!(r, ember_result::EMBER_ERR_INTERNAL);
    let prompt = c"hello";
    let mut id = 0;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, prompt.as_ptr(), ptr::null(), &mut id) };
    assert_eq!(r, ember_result::EMBER_ERR_POISONED);
    assert_eq!(id, 0, "out-param untouched on failure");
    let mut stats = ember_stats::default();
    // SAFETY: valid arguments.
    let r = unsafe { ember_get_stats(rt, &mut stats) };
    assert_eq!(r, ember_result::EMBER_ERR_POISONED);
    // What the runtime was built with is still reported.
    let mut info = std::mem::MaybeUninit::<ember_model_info>::uninit();
    // SAFETY: valid arguments.
    let r = unsafe { ember_get_model_info(rt, info.as_mut_ptr()) };
    assert_eq!(r, ember_result::EMBER_OK);
    // SAFETY: written on EMBER_OK; its strings live as long as `rt`.
    let arch = unsafe { CStr::from_ptr(info.assume_init().architecture) };
    assert_eq!(arch, c"llama");
    // Freeing a poisoned runtime is still fine.
    // SAFETY: `rt` is live and freed once.
    unsafe { ember_runtime_free(rt) };
}

/// Step `rt` until it is idle, then pull sequence 0 of request `id` to its finish (which must
/// be `EMBER_FINISH_LENGTH`): its ids and its text.
fn run_and_pull(rt: *mut ember_runtime, id: ember_request_id) -> (Vec<u32>, String) {
    let mut more = true;
    while more {
        // SAFETY: valid arguments.
        assert_eq!(unsafe { ember_step(rt, &mut more) }, ember_result::EMBER_OK);
    }
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        let mut ev = std::mem::MaybeUninit::<ember_event>::uninit();
        // SAFETY: valid arguments.
        let r = unsafe { ember_next(rt, id, 0, ev.as_mut_ptr()) };
        assert_eq!(r, ember_result::EMBER_OK);
        // SAFETY: written on success.
        let ev = unsafe { ev.assume_init() };
        if ev.kind == ember_event_kind::EMBER_EVENT_FINISHED {
            assert_eq!(ev.finish_reason, ember_finish_reason::EMBER_FINISH_LENGTH);
            return (ids, text);
        }
        ids.push(ev.token);
        // SAFETY: a NUL-terminated string of `text_len` bytes.
        let piece = unsafe { CStr::from_ptr(ev.text as *const c_char) };
        assert_eq!(piece.to_bytes().len(), ev.text_len);
        text.push_str(piece.to_str().unwrap());
    }
}

#[test]
fn greedy_through_the_abi_equals_the_engine() {
    let (dir, path) = synth_model();
    let rt = new_runtime(&path);
    let prompt = c"ab";
    let mut params = ember_params_default();
    params.max_tokens = 12;
    params.ignore_eos = true;
    let mut id = 0;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, prompt.as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let (ids, text) = run_and_pull(rt, id);
    // The same request straight through the engine.
    let model = ember::model::Model::load(dir.0.join("synth.gguf")).unwrap();
    let cfg = small_config().to_engine().unwrap();
    let mut e = ember::engine::Engine::new(model, cfg).unwrap();
    let want = e
        .submit_text(
            "ab",
            &ember::engine::RequestParams {
                max_tokens: 12,
                ignore_eos: true,
                ..Default::default()
            },
        )
        .unwrap();
    while e.has_work() {
        e.step().unwrap();
    }
    let o = e.output(want).unwrap().next().unwrap();
    assert_eq!(ids, o.ids);
    assert_eq!(text, o.text);
    // SAFETY: valid arguments; then the handle is freed once.
    unsafe {
        assert_eq!(ember_release(rt, id), ember_result::EMBER_OK);
        assert_eq!(
            ember_release(rt, id),
            ember_result::EMBER_ERR_UNKNOWN_REQUEST
        );
        ember_runtime_free(rt);
    }
}

/// `params.n = 3` through the ABI: each sequence pulled with `ember_next_seq` has the ids the
/// engine gives the same request (seeds `seed + i`), a sequence past `n` is refused, and `n`
/// above `max_seqs` is `EMBER_ERR_INVALID_ARGUMENT`.
#[test]
fn parallel_samples_through_the_abi_equal_the_engine() {
    let (dir, path) = synth_model();
    let rt = new_runtime(&path);
    let mut params = ember_params_default();
    params.max_tokens = 6;
    params.ignore_eos = true;
    // Flat enough for the synthetic model's peaked logits to give way.
    params.temperature = 5.0;
    params.top_k = 0;
    params.top_p = 1.0;
    params.min_p = 0.0;
    params.seed = 11;
    params.n = 5; // max_seqs is 4
    let mut id = 0;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);
    params.n = 3;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let mut more = true;
    while more {
        // SAFETY: valid arguments.
        assert_eq!(unsafe { ember_step(rt, &mut more) }, ember_result::EMBER_OK);
    }
    let mut got = Vec::new();
    for seq in 0..3 {
        let mut ids = Vec::new();
        loop {
            let mut ev = std::mem::MaybeUninit::<ember_event>::uninit();
            // SAFETY: valid arguments.
            let r = unsafe { ember_next_seq(rt, id, seq, 0, ev.as_mut_ptr()) };
            assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
            // SAFETY: written on success.
            let ev = unsafe { ev.assume_init() };
            if ev.kind == ember_event_kind::EMBER_EVENT_FINISHED {
                assert_eq!(ev.finish_reason, ember_finish_reason::EMBER_FINISH_LENGTH);
                break;
            }
            ids.push(ev.token);
        }
        got.push(ids);
    }
    let mut ev = std::mem::MaybeUninit::<ember_event>::uninit();
    // SAFETY: valid arguments.
    let r = unsafe { ember_next_seq(rt, id, 3, 0, ev.as_mut_ptr()) };
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);

    let model = ember::model::Model::load(dir.0.join("synth.gguf")).unwrap();
    let mut e = ember::engine::Engine::new(model, small_config().to_engine().unwrap()).unwrap();
    // SAFETY: no pointers in these params (no stop strings or ids).
    let want = e
        .submit_text("ab", &unsafe { params.to_request() }.unwrap())
        .unwrap();
    while e.has_work() {
        e.step().unwrap();
    }
    let want: Vec<Vec<u32>> = e.output(want).unwrap().map(|o| o.ids.clone()).collect();
    assert_eq!(got, want);
    assert_ne!(got[0], got[1], "seeds 11 and 12 at temperature 5 diverge");
    // SAFETY: valid arguments; then the handle is freed once.
    unsafe {
        assert_eq!(ember_release(rt, id), ember_result::EMBER_OK);
        ember_runtime_free(rt);
    }
}

/// `EMBER_CONTEXT_SHIFT`: a generation three contexts long runs to `max_tokens` with the ids the
/// engine gives the same shifting request; without it the request is `EMBER_ERR_TOO_LARGE`; a
/// `context_keep` that leaves nothing to drop is `EMBER_ERR_INVALID_ARGUMENT`.
#[test]
fn context_shift_through_the_abi_equals_the_engine() {
    let (dir, path) = synth_model();
    let mut rt = ptr::null_mut();
    let cfg = ember_config {
        n_ctx: 64,
        ..small_config()
    };
    // SAFETY: valid path, config and out-pointer.
    let r = unsafe { ember_runtime_new(path.as_ptr(), &cfg, &mut rt) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let mut params = ember_params_default();
    params.max_tokens = 192;
    params.ignore_eos = true;
    let mut id = 0;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_ERR_TOO_LARGE, "{}", last_error());
    params.context_policy = EMBER_CONTEXT_SHIFT;
    params.context_keep = 60;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("keep at most"), "{}", last_error());
    params.context_keep = 8;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let (ids, _) = run_and_pull(rt, id);
    assert_eq!(ids.len(), 192);
    let model = ember::model::Model::load(dir.0.join("synth.gguf")).unwrap();
    let mut e = ember::engine::Engine::new(model, cfg.to_engine().unwrap()).unwrap();
    let params = ember::engine::RequestParams {
        max_tokens: 192,
        ignore_eos: true,
        context_shift: Some(ember::engine::ContextShift { keep: 8 }),
        ..Default::default()
    };
    let want = e.submit_text("ab", &params).unwrap();
    while e.has_work() {
        e.step().unwrap();
    }
    let o = e.output(want).unwrap().next().unwrap();
    assert!(o.shifted_tokens > 0);
    assert_eq!(ids, o.ids);
    // SAFETY: valid arguments; then the handle is freed once.
    unsafe {
        assert_eq!(ember_release(rt, id), ember_result::EMBER_OK);
        ember_runtime_free(rt);
    }
}

/// Write the synthetic model of `spec` into `dir` as `name`; its path as a C string.
fn synth_file(dir: &tempdir::Dir, name: &str, spec: &ember::synth::SynthSpec) -> CString {
    let path = dir.0.join(name);
    ember::synth::synth_gguf(spec)
        .unwrap()
        .write_to(&path)
        .unwrap();
    CString::new(path.to_str().unwrap()).unwrap()
}

/// `ember_get_model_info` of a live runtime (which must succeed).
fn model_info(rt: *mut ember_runtime) -> ember_model_info {
    let mut info = std::mem::MaybeUninit::<ember_model_info>::uninit();
    // SAFETY: a live runtime and a valid out-pointer, written on EMBER_OK (asserted).
    unsafe {
        assert_eq!(
            ember_get_model_info(rt, info.as_mut_ptr()),
            ember_result::EMBER_OK
        );
        info.assume_init()
    }
}

/// `config.kv_type`: quantized KV holds more tokens in the same bytes (reported by
/// `ember_get_model_info`), generates what the engine with that KV type generates, and a bad
/// value or a head size the type cannot store is `EMBER_ERR_INVALID_ARGUMENT`.
#[test]
fn quantized_kv_through_the_abi() {
    let dir = tempdir::Dir::new();
    // Head size 32 (64 / 2): one Q8_0 or Q4_0 block per row.
    let spec = ember::synth::SynthSpec {
        n_head: 2,
        n_head_kv: 1,
        ..Default::default()
    };
    let cpath = synth_file(&dir, "d32.gguf", &spec);
    let path = std::path::PathBuf::from(cpath.to_str().unwrap());
    let open = |kv_type: u32, model: &CString| {
        let cfg = ember_config {
            kv_blocks: 0,
            kv_bytes: 1 << 20,
            kv_type,
            backend: ember_backend::EMBER_BACKEND_CPU as u32,
            ..small_config()
        };
        let mut rt = ptr::null_mut();
        // SAFETY: valid path, config and out-pointer.
        let r = unsafe { ember_runtime_new(model.as_ptr(), &cfg, &mut rt) };
        (r, rt)
    };
    let capacity = |rt| {
        let info = model_info(rt);
        (info.kv_type, info.kv_capacity_tokens)
    };
    let (r, f16_rt) = open(ember_kv_type::EMBER_KV_F16 as u32, &cpath);
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let (r, q8_rt) = open(ember_kv_type::EMBER_KV_Q8_0 as u32, &cpath);
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let (f16_type, f16_tokens) = capacity(f16_rt);
    let (q8_type, q8_tokens) = capacity(q8_rt);
    assert_eq!((f16_type, q8_type), (0, 1));
    // 64 bytes per f16 row, 34 per Q8_0 row: 1.88x, less a block's rounding.
    let ratio = q8_tokens as f64 / f16_tokens as f64;
    assert!((1.8..1.9).contains(&ratio), "{q8_tokens} / {f16_tokens}");
    let mut params = ember_params_default();
    params.max_tokens = 10;
    params.ignore_eos = true;
    let mut id = 0;
    // SAFETY: valid arguments.
    let r = unsafe { ember_submit(q8_rt, c"ab".as_ptr(), &params, &mut id) };
    assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
    let (ids, _) = run_and_pull(q8_rt, id);
    let model = ember::model::Model::load(&path).unwrap();
    let cfg = ember::engine::EngineConfig {
        kv_type: ember::kv::KvType::Q8_0,
        ..small_config().to_engine().unwrap()
    };
    let mut e = ember::engine::Engine::new(model, cfg).unwrap();
    let p = ember::engine::RequestParams {
        max_tokens: 10,
        ignore_eos: true,
        ..Default::default()
    };
    let want = e.submit_text("ab", &p).unwrap();
    while e.has_work() {
        e.step().unwrap();
    }
    assert_eq!(ids, e.output(want).unwrap().next().unwrap().ids);
    // SAFETY: both live, freed once.
    unsafe {
        ember_runtime_free(f16_rt);
        ember_runtime_free(q8_rt);
    }
    let (r, rt) = open(7, &cpath);
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);
    assert!(rt.is_null());
    assert!(last_error().contains("kv_type = 7"), "{}", last_error());
    // The default synthetic model has heads of 16: not a whole Q4_0 block.
    let (_dir16, path16) = synth_model();
    let (r, rt) = open(ember_kv_type::EMBER_KV_Q4_0 as u32, &path16);
    assert_eq!(r, ember_result::EMBER_ERR_INVALID_ARGUMENT);
    assert!(rt.is_null());
    assert!(last_error().contains("multiple of 32"), "{}", last_error());
}

/// `config.swa_full`: a model with sliding-window layers (synthetic Gemma 3, window 8) at a
/// context past the window holds more tokens per sequence in the same bytes unless every block
/// is kept, and generates the same ids either way.
#[test]
fn sliding_window_blocks_through_the_abi() {
    let dir = tempdir::Dir::new();
    let spec = ember::synth::SynthSpec {
        arch: "gemma3".into(),
        n_layer: 6,
        sliding_window: 8,
        ..Default::default()
    };
    let cpath = synth_file(&dir, "gemma3.gguf", &spec);
    let run = |swa_full: bool| {
        let cfg = ember_config {
            n_ctx: 256,
            kv_blocks: 0,
            kv_bytes: 1 << 20,
            swa_full,
            backend: ember_backend::EMBER_BACKEND_CPU as u32,
            ..small_config()
        };
        let mut rt = ptr::null_mut();
        // SAFETY: valid path, config and out-pointer.
        let r = unsafe { ember_runtime_new(cpath.as_ptr(), &cfg, &mut rt) };
        assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
        let info = model_info(rt);
        let mut params = ember_params_default();
        params.max_tokens = 40;
        params.ignore_eos = true;
        let mut id = 0;
        // SAFETY: valid arguments.
        let r = unsafe { ember_submit(rt, c"abcabc".as_ptr(), &params, &mut id) };
        assert_eq!(r, ember_result::EMBER_OK, "{}", last_error());
        let (ids, _) = run_and_pull(rt, id);
        // SAFETY: live, freed once.
        unsafe { ember_runtime_free(rt) };
        (info.kv_capacity_tokens, ids)
    };
    let (all_blocks, want) = run(true);
    let (released, ids) = run(false);
    assert_eq!(ids, want);
    assert!(
        released > all_blocks * 3,
        "{released} tokens against {all_blocks}"
    );
}
