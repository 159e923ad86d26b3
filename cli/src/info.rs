//! `ember info` (what a model file holds and how it would run here) and `ember --version`.

use std::io::Write;

use ember::model::Model;

use crate::commands::{model_path, open_session_from, CliError, CliResult};
use crate::flags::InfoArgs;
use crate::output;

/// What `ember --version` prints after "ember ": the version, the CPU kernel path this machine
/// gets, and whether the CUDA backend is built in.
pub fn version_line() -> String {
    let cpu = match ember_kernels::dispatch::KernelSet::detect() {
        Ok(k) => k.path().name().to_string(),
        Err(e) => format!("none ({e})"),
    };
    let cuda = if ember::backend::CUDA_BUILT {
        "built in"
    } else {
        "not built (--features cuda)"
    };
    format!(
        "{} (cpu kernels: {cpu}; simd: {}; cuda: {cuda})",
        env!("CARGO_PKG_VERSION"),
        if ember::backend::SIMD_BUILT {
            "on"
        } else {
            "off"
        }
    )
}

pub fn info(a: &InfoArgs) -> CliResult {
    let path = model_path(&a.common);
    let file = ember::gguf::GgufFile::open(&path)?;
    // Every line goes through `w!`: the first failed write ends the command (`| head -1`).
    let mut o = std::io::stdout().lock();
    macro_rules! w {
        ($($t:tt)*) => { writeln!(o, $($t)*).map_err(output::write_error)? };
    }
    w!(
        "file: {} ({} bytes, GGUF v{})",
        path.display(),
        file.file_size(),
        file.version()
    );
    let model = match Model::from_gguf(file) {
        Ok(m) => m,
        Err(e) => {
            // A model Ember cannot run: what the file holds says why.
            let file = ember::gguf::GgufFile::open(&path)?;
            write_listing(&mut o, &file, true)?;
            return Err(e.into());
        }
    };
    let c = model.config.clone();
    let name = model
        .file
        .get_str("general.name")
        .ok()
        .flatten()
        .map(str::to_string);
    w!(
        "model: {}{} | {} layers, n_embd {}, {} heads / {} KV heads (head dim {}), n_ff {}, \
         vocab {}, context {}, rope base {}",
        c.arch.name(),
        name.map(|n| format!(" {n:?}")).unwrap_or_default(),
        c.n_layer,
        c.n_embd,
        c.n_head,
        c.n_head_kv,
        c.head_dim,
        c.n_ff,
        c.n_vocab,
        c.n_ctx_train,
        c.rope_base
    );
    let tensors = model.file.tensors();
    let params: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    w!(
        "parameters: {:.2} M in {} tensors",
        params as f64 / 1e6,
        tensors.len()
    );
    // The quantization mix: tensors and bytes per type, largest share first.
    let mut mix: Vec<(&str, usize, usize)> = Vec::new();
    for t in tensors {
        match mix.iter_mut().find(|m| m.0 == t.ty.name()) {
            Some(m) => {
                m.1 += 1;
                m.2 += t.data.len();
            }
            None => mix.push((t.ty.name(), 1, t.data.len())),
        }
    }
    mix.sort_by_key(|m| std::cmp::Reverse(m.2));
    let mix: Vec<String> = mix
        .iter()
        .map(|(ty, n, bytes)| format!("{ty} × {n} ({:.1} MiB)", *bytes as f64 / MIB))
        .collect();
    w!("weights: {}", mix.join(", "));
    if a.check_tensors {
        model.check_tensors()?;
        w!("tensors checked: every weight is finite");
    }
    o.flush().map_err(output::write_error)?;
    let s = open_session_from(model, &a.common, 512, 1)?;
    let kernels = match s.backend().name() {
        "cpu" => match ember_kernels::dispatch::KernelSet::detect() {
            Ok(k) => format!(", {} kernels", k.path().name()),
            Err(e) => format!(", kernels: {e}"),
        },
        _ => String::new(),
    };
    w!("compute: {}{kernels}", s.backend().describe());
    w!("memory plan:");
    w!(
        "  weights mapped   {:>12} bytes (not copied)",
        s.model().weight_bytes()
    );
    let e = s.engine();
    let (g, bs) = (e.kv_groups(), e.block_size());
    w!(
        "  KV arena         {:>12} bytes ({} blocks of {} tokens, context {}; {} tokens of {} \
         K/V, the null block aside)",
        s.arena_bytes(),
        s.arena_blocks(),
        bs,
        s.n_ctx(),
        e.kv_capacity_tokens(),
        e.kv_type()
    );
    let block_bytes = e.backend().layout().block_bytes();
    let windows: Vec<usize> = (0..g.len())
        .map(|i| g.window(i))
        .filter(|&w| w > 0)
        .collect();
    if let Some(&window) = windows.first() {
        w!(
            "  KV per sequence  {:>12} bytes at context {} ({} layer groups of {} layer(s); the \
             {} groups of sliding-window layers keep {} positions and give older blocks back to \
             the arena; {} bytes keeping every block, --swa-full)",
            e.blocks_for(s.n_ctx()) * block_bytes,
            s.n_ctx(),
            g.len(),
            g.size(),
            windows.len(),
            window,
            s.n_ctx().div_ceil(bs) * g.len() * block_bytes
        );
    }
    w!("  scratch          {:>12} bytes", s.scratch_bytes());
    write_listing(&mut o, &s.model().file, a.tensors)?;
    o.flush().map_err(output::write_error)
}

const MIB: f64 = 1024.0 * 1024.0;

/// The metadata of `file`, then its tensor table when `tensors` is set (else a line saying how
/// to get it).
fn write_listing(
    o: &mut impl Write,
    file: &ember::gguf::GgufFile,
    tensors: bool,
) -> Result<(), CliError> {
    let mut w = |line: String| writeln!(o, "{line}").map_err(output::write_error);
    w(format!("\nmetadata ({} keys):", file.metadata().count()))?;
    for (k, v) in file.metadata() {
        w(format!("  {k:<44} {}", file.display_value(v)))?;
    }
    if !tensors {
        return w(format!(
            "\n{} tensors: `ember info --tensors` lists them",
            file.tensors().len()
        ));
    }
    w(format!("\ntensors ({}):", file.tensors().len()))?;
    for t in file.tensors() {
        w(format!(
            "  {:<32} {:<6} {:<16} {:>10} bytes at {}",
            t.name,
            t.ty.name(),
            t.shape_string(),
            t.data.len(),
            t.data.start
        ))?;
    }
    Ok(())
}
