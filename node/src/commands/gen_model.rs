//! `helixflow gen-model`: writes a random-weight model with a progress bar.

use anyhow::{Context, bail};
use helixflow_kernels::gen_model::{ModelSpec, RopeScalingSpec, write_model};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::GenModelArgs;

pub fn run(args: GenModelArgs) -> anyhow::Result<()> {
    let mut spec = ModelSpec::new(
        args.arch,
        args.hidden,
        args.layers,
        args.heads,
        args.kv_heads,
        args.intermediate,
        args.vocab,
        args.dtype,
    );
    spec.seed = args.seed;
    spec.max_position_embeddings = args.max_position_embeddings;
    spec.rope_theta = args.rope_theta;
    spec.sliding_window = args.sliding_window;
    spec.max_shard_bytes = args.shard_mb.map(|mb| mb << 20);
    if let Some(tie) = args.tie_embeddings {
        spec.tie_word_embeddings = tie;
    }
    if let Some(s) = &args.rope_scaling {
        spec.rope_scaling = Some(parse_rope_scaling(s)?);
    }
    spec.validate()?;

    let bar = ProgressBar::new(spec.weight_bytes());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} writing weights [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    write_model(&spec, &args.out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({}, {:.1}M parameters, {} MiB of {} weights)",
        args.out.display(),
        args.arch.class_name(),
        spec.parameter_count() as f64 / 1e6,
        spec.weight_bytes() >> 20,
        args.dtype,
    );
    Ok(())
}

fn parse_rope_scaling(s: &str) -> anyhow::Result<RopeScalingSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |i: usize| -> anyhow::Result<f32> {
        parts
            .get(i)
            .with_context(|| format!("--rope-scaling `{s}`: missing field {i}"))?
            .parse::<f32>()
            .with_context(|| format!("--rope-scaling `{s}`: field {i} is not a number"))
    };
    match parts[0] {
        "linear" if parts.len() == 2 => Ok(RopeScalingSpec::Linear { factor: num(1)? }),
        "llama3" if parts.len() == 5 => Ok(RopeScalingSpec::Llama3 {
            factor: num(1)?,
            low_freq_factor: num(2)?,
            high_freq_factor: num(3)?,
            original_max_position_embeddings: num(4)? as usize,
        }),
        _ => bail!(
            "--rope-scaling `{s}`: expected linear:FACTOR or llama3:FACTOR:LOW:HIGH:ORIGINAL_MAX_POSITIONS"
        ),
    }
}
