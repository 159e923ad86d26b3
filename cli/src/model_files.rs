//! The commands that write model files: `ember convert` (a model's weights in another type,
//! or its first blocks only) and `ember synth` (a synthetic model with seeded random weights).

use crate::commands::{model_path, usage, CliError, CliResult};
use crate::flags::{ConvertArgs, SynthArgs};

fn parse_type(name: &str) -> Result<ember_kernels::GgmlType, CliError> {
    ember_kernels::SUPPORTED
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            usage(format!(
                "unknown type {name:?} (supported: {})",
                ember_kernels::supported_names()
            ))
        })
}

/// A weight type (`Q8_0`) or one of llama-quantize's k-quant mixes (`Q4_K_M`).
fn parse_quantization(name: &str) -> Result<ember::convert::Quantization, CliError> {
    use ember::convert::{KMix, Quantization};
    if let Some(m) = KMix::ALL
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    {
        return Ok(Quantization::Mix(m));
    }
    parse_type(name).map(Quantization::Uniform).map_err(|_| {
        let mixes: Vec<&str> = KMix::ALL.iter().map(|m| m.name()).collect();
        usage(format!(
            "unknown type {name:?} (supported: {}; mixes: {})",
            ember_kernels::supported_names(),
            mixes.join(", ")
        ))
    })
}

pub fn convert(a: &ConvertArgs) -> CliResult {
    let out = a
        .output
        .clone()
        .ok_or_else(|| usage("convert needs -o OUTPUT".into()))?;
    let input = model_path(&a.common);
    // Writing over the input while it is mapped (here, or by anyone else) would pull the
    // pages out from under the readers: refuse, whatever the spelling of the path.
    if same_file(&input, &out) {
        return Err(usage(format!(
            "-o {} is the input model itself: write to another file",
            out.display()
        )));
    }
    let opts = ember::convert::ConvertOptions {
        quantization: a.ty.as_deref().map(parse_quantization).transpose()?,
        keep_layers: a.layers,
    };
    let file = ember::gguf::GgufFile::open(&input)?;
    let mut bar = crate::progress::Progress::new("convert: tensors", None);
    // Written one tensor at a time to a temporary file beside OUT, then renamed over it.
    ember::convert::convert_to_file(&file, &opts, &out, |done, total| {
        bar.set_total(total as u64);
        bar.set(done as u64, "");
    })?;
    bar.finish();
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Whether `a` and `b` name the same existing file (same device and inode, so hard links and
/// other spellings count).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

pub fn synth(a: &SynthArgs) -> CliResult {
    let out = a
        .output
        .clone()
        .ok_or_else(|| usage("synth needs -o OUTPUT".into()))?;
    let d = ember::synth::SynthSpec::default();
    let spec = ember::synth::SynthSpec {
        arch: a.arch.clone().unwrap_or(d.arch),
        n_vocab: a.vocab.unwrap_or(d.n_vocab),
        n_embd: a.embd.unwrap_or(d.n_embd),
        n_layer: a.layers.unwrap_or(d.n_layer),
        n_head: a.heads.unwrap_or(d.n_head),
        n_head_kv: a.kv_heads.unwrap_or(d.n_head_kv),
        n_ff: a.ff.unwrap_or(d.n_ff),
        n_ctx: a.ctx.unwrap_or(d.n_ctx),
        weight_type: a
            .ty
            .as_deref()
            .map(parse_type)
            .transpose()?
            .unwrap_or(d.weight_type),
        embd_type: a
            .embd_type
            .as_deref()
            .map(parse_type)
            .transpose()?
            .unwrap_or(d.embd_type),
        separate_output: a.separate_output,
        seed: a.seed.unwrap_or(d.seed),
        sliding_window: a.window.unwrap_or(d.sliding_window),
    };
    let w = ember::synth::synth_gguf(&spec)?;
    w.write_to(&out)
        .map_err(|e| CliError::Run(format!("{}: {e}", out.display())))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
